"""State transitions of payments and refunds, each one conditional UPDATE.

Only the transition that wins writes the balance entry and emits the event, in the same
transaction: a second run, a late gateway event or the reconciler finding the same outcome
changes nothing. The caller commits.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, update
from sqlalchemy.orm import Session

from conveyor.core.models import utcnow
from conveyor.webhooks.service import emit_event
from conveyor.workloads.payments import events
from conveyor.workloads.payments.gateway import ChargeResult, RefundResult
from conveyor.workloads.payments.models import (
    BalanceEntry,
    Payment,
    PaymentState,
    Refund,
    RefundState,
)

# Outcomes can still be settled from these: a late answer resolves a review too.
UNSETTLED_PAYMENT = (PaymentState.PENDING, PaymentState.PROCESSING, PaymentState.REQUIRES_REVIEW)
UNSETTLED_REFUND = (RefundState.PENDING, RefundState.PROCESSING, RefundState.REQUIRES_REVIEW)
MAX_MESSAGE = 500


def _returning(statement: Any) -> Any:
    return statement.execution_options(synchronize_session=False, populate_existing=True)


def settle_charge(session: Session, payment_id: str, result: ChargeResult) -> Payment | None:
    """Record the gateway's answer; the payment if this call settled it, else None."""
    now = utcnow()
    values: dict[str, Any] = {"state": result.status, "settled_at": now, "updated_at": now}
    # What the gateway says the card is fills in what the API could not tell.
    if result.card_brand:
        values["card_brand"] = func.coalesce(Payment.card_brand, result.card_brand[:20])
    if result.card_last4:
        values["card_last4"] = func.coalesce(Payment.card_last4, result.card_last4[-4:])
    if result.status == "succeeded":
        values.update(amount_captured=Payment.amount, gateway_charge_id=result.charge_id)
    else:
        values.update(
            gateway_charge_id=result.charge_id,
            failure_code=(result.failure_code or "failed")[:64],
            failure_message=(result.failure_message or "")[:MAX_MESSAGE] or None,
        )
    statement = (
        update(Payment)
        .where(Payment.id == payment_id, Payment.state.in_(UNSETTLED_PAYMENT))
        .values(**values)
        .returning(Payment)
    )
    payment: Payment | None = session.scalars(_returning(statement)).first()
    if payment is None:
        return None
    if result.status == "succeeded":
        session.add(
            BalanceEntry(
                entry_key=f"charge:{payment.id}",
                payment_id=payment.id,
                owner=payment.owner,
                kind="charge",
                amount=payment.amount,
                currency=payment.currency,
                created_at=now,
            )
        )
        emit_event(session, payment.owner, events.PAYMENT_SUCCEEDED, events.payment_data(payment))
    else:
        emit_event(session, payment.owner, events.PAYMENT_FAILED, events.payment_data(payment))
    session.flush()
    return payment


def settle_refund(session: Session, refund_id: str, result: RefundResult) -> Refund | None:
    """Record the gateway's answer for a refund, and release or book its reservation."""
    now = utcnow()
    values: dict[str, Any] = {"state": result.status, "settled_at": now, "updated_at": now}
    values["gateway_refund_id"] = result.refund_id
    if result.status == "failed":
        values["failure_code"] = (result.failure_code or "failed")[:64]
        values["failure_message"] = (result.failure_message or "")[:MAX_MESSAGE] or None
    statement = (
        update(Refund)
        .where(Refund.id == refund_id, Refund.state.in_(UNSETTLED_REFUND))
        .values(**values)
        .returning(Refund)
    )
    refund: Refund | None = session.scalars(_returning(statement)).first()
    if refund is None:
        return None
    moved = refund.amount if result.status == "succeeded" else 0
    session.execute(
        update(Payment)
        .where(Payment.id == refund.payment_id)
        .values(
            amount_refund_pending=Payment.amount_refund_pending - refund.amount,
            amount_refunded=Payment.amount_refunded + moved,
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    if result.status == "succeeded":
        session.add(
            BalanceEntry(
                entry_key=f"refund:{refund.id}",
                payment_id=refund.payment_id,
                refund_id=refund.id,
                owner=refund.owner,
                kind="refund",
                amount=-refund.amount,
                currency=refund.currency,
                created_at=now,
            )
        )
        emit_event(session, refund.owner, events.REFUND_SUCCEEDED, events.refund_data(refund))
    else:
        emit_event(session, refund.owner, events.REFUND_FAILED, events.refund_data(refund))
    session.flush()
    return refund


def _park(
    session: Session,
    model: type[Payment] | type[Refund],
    row_id: str,
    startable: tuple[str, str],
    review: str,
    reason: str,
) -> bool:
    """One conditional UPDATE to `review`; True if this call moved the row."""
    done = session.execute(
        update(model)
        .where(model.id == row_id, model.state.in_(startable))
        .values(state=review, failure_message=reason[:MAX_MESSAGE], updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return int(getattr(done, "rowcount", 0)) == 1


def payment_needs_review(session: Session, payment_id: str, reason: str) -> bool:
    """Park a payment whose outcome nobody could learn; True if this call parked it."""
    startable = (PaymentState.PENDING, PaymentState.PROCESSING)
    return _park(session, Payment, payment_id, startable, PaymentState.REQUIRES_REVIEW, reason)


def refund_needs_review(session: Session, refund_id: str, reason: str) -> bool:
    """Park a refund; its reservation stays until the review settles it."""
    startable = (RefundState.PENDING, RefundState.PROCESSING)
    return _park(session, Refund, refund_id, startable, RefundState.REQUIRES_REVIEW, reason)
