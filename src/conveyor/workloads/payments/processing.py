"""Charging and refunding through a gateway, safe to run any number of times.

The gateway's idempotency key is the payment (or refund) id, so every run of the same
payment asks for the same charge. From the second attempt on, a run first asks the gateway
whether the charge exists: an attempt that timed out is settled from what the gateway did,
never sent blind again. Each step is its own short transaction: no database transaction
is held open across a gateway call.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from conveyor.core.models import utcnow
from conveyor.workloads.payments import hooks
from conveyor.workloads.payments.gateway import (
    ChargeRequest,
    ChargeResult,
    GatewayRejected,
    GatewayUnavailable,
    PaymentGateway,
    RefundRequest,
    RefundResult,
)
from conveyor.workloads.payments.models import Payment, PaymentState, Refund, RefundState
from conveyor.workloads.payments.settlement import (
    payment_needs_review,
    refund_needs_review,
    settle_charge,
    settle_refund,
)

log = logging.getLogger(__name__)
Sessions = Callable[[], Session]
STARTABLE_PAYMENT = (PaymentState.PENDING, PaymentState.PROCESSING)
STARTABLE_REFUND = (RefundState.PENDING, RefundState.PROCESSING)


@dataclass(frozen=True)
class Started:
    attempt: int
    request: ChargeRequest


def _start_charge(sessions: Sessions, payment_id: str) -> Started | None:
    """Move the payment to processing and count the attempt; None if it is settled."""
    now = utcnow()
    with sessions() as session:
        row = session.execute(
            update(Payment)
            .where(Payment.id == payment_id, Payment.state.in_(STARTABLE_PAYMENT))
            .values(
                state=PaymentState.PROCESSING,
                attempts=Payment.attempts + 1,
                processing_since=func.coalesce(Payment.processing_since, now),
                updated_at=now,
            )
            .returning(
                Payment.attempts,
                Payment.amount,
                Payment.currency,
                Payment.payment_method,
                Payment.customer_id,
            )
        ).first()
        session.commit()
    if row is None:
        return None
    request = ChargeRequest(
        key=payment_id,
        amount=row.amount,
        currency=row.currency,
        payment_method=row.payment_method,
        customer_id=row.customer_id,
    )
    return Started(attempt=row.attempts, request=request)


def _current_state(sessions: Sessions, model: type[Payment] | type[Refund], row_id: str) -> str:
    with sessions() as session:
        state = session.scalar(select(model.state).where(model.id == row_id))
    return state or "missing"


def charge(sessions: Sessions, gateway: PaymentGateway, payment_id: str) -> dict[str, Any]:
    """Charge the payment once. Raises GatewayUnavailable (transient) when the outcome is
    unknown; the next attempt asks the gateway before charging."""
    started = _start_charge(sessions, payment_id)
    if started is None:
        state = _current_state(sessions, Payment, payment_id)
        return {"payment_id": payment_id, "status": state, "charged": False}
    customer = started.request.customer_id
    result: ChargeResult | None = None
    if started.attempt > 1:
        result = gateway.find_charge(payment_id)
    if result is None:
        hooks.charge_requested.send(sender=None, payment_id=payment_id, customer_id=customer)
        try:
            result = gateway.charge(started.request)
        except GatewayRejected as exc:
            result = ChargeResult("failed", None, 0, "gateway_rejected", str(exc))
        hooks.charge_returned.send(sender=None, payment_id=payment_id, customer_id=customer)
    with sessions() as session:
        settled = settle_charge(session, payment_id, result)
        hooks.charge_settling.send(sender=None, payment_id=payment_id, customer_id=customer)
        session.commit()
    return {
        "payment_id": payment_id,
        "status": result.status,
        "charge_id": result.charge_id,
        "failure_code": result.failure_code,
        "settled_here": settled is not None,
    }


def refund(sessions: Sessions, gateway: PaymentGateway, refund_id: str) -> dict[str, Any]:
    """Pay the refund back once; same rules as `charge`."""
    now = utcnow()
    with sessions() as session:
        row = session.execute(
            update(Refund)
            .where(Refund.id == refund_id, Refund.state.in_(STARTABLE_REFUND))
            .values(
                state=RefundState.PROCESSING,
                attempts=Refund.attempts + 1,
                processing_since=func.coalesce(Refund.processing_since, now),
                updated_at=now,
            )
            .returning(Refund.attempts, Refund.amount, Refund.currency, Refund.payment_id)
        ).first()
        charge_id = (
            session.scalar(select(Payment.gateway_charge_id).where(Payment.id == row.payment_id))
            if row is not None
            else None
        )
        session.commit()
    if row is None:
        return {"refund_id": refund_id, "status": _current_state(sessions, Refund, refund_id)}
    result: RefundResult | None = None
    if row.attempts > 1:
        result = gateway.find_refund(refund_id)
    if result is None:
        request = RefundRequest(refund_id, charge_id or "", row.amount, row.currency)
        try:
            result = gateway.refund(request)
        except GatewayRejected as exc:
            result = RefundResult("failed", None, 0, "gateway_rejected", str(exc))
    with sessions() as session:
        settled = settle_refund(session, refund_id, result)
        session.commit()
    return {
        "refund_id": refund_id,
        "status": result.status,
        "gateway_refund_id": result.refund_id,
        "settled_here": settled is not None,
    }


def give_up_payment(sessions: Sessions, payment_id: str, reason: str) -> bool:
    with sessions() as session:
        parked = payment_needs_review(session, payment_id, reason)
        session.commit()
    if parked:
        log.warning("payment %s requires review: %s", payment_id, reason)
    return parked


def give_up_refund(sessions: Sessions, refund_id: str, reason: str) -> bool:
    with sessions() as session:
        parked = refund_needs_review(session, refund_id, reason)
        session.commit()
    if parked:
        log.warning("refund %s requires review: %s", refund_id, reason)
    return parked


def requeue_unstarted(
    sessions: Sessions,
    publish: Callable[[str, str, str | None], None],
    *,
    older_than: float,
    limit: int = 200,
) -> int:
    """Publish again the charges and refunds still `pending` after `older_than` seconds.

    The Redis broker can lose a message whose worker dies between taking it off the queue
    and recording it as unacknowledged. Charging is keyed by the payment id, so a second
    message for the same payment is harmless: `publish(kind, id, job_id)` sends one.
    """
    cutoff = utcnow() - timedelta(seconds=older_than)
    with sessions() as session:
        payments = session.execute(
            select(Payment.id, Payment.job_id)
            .where(Payment.state == PaymentState.PENDING, Payment.created_at < cutoff)
            .limit(limit)
        ).all()
        refunds = session.execute(
            select(Refund.id, Refund.job_id)
            .where(Refund.state == RefundState.PENDING, Refund.created_at < cutoff)
            .limit(limit)
        ).all()
    for payment_id, job_id in payments:
        log.warning("payment %s was never started; publishing its charge again", payment_id)
        publish("charge", payment_id, job_id)
    for refund_id, job_id in refunds:
        log.warning("refund %s was never started; publishing it again", refund_id)
        publish("refund", refund_id, job_id)
    return len(payments) + len(refunds)


def reconcile(
    sessions: Sessions, gateway: PaymentGateway, *, older_than: float, limit: int = 200
) -> dict[str, int]:
    """Settle payments and refunds stuck in processing by asking the gateway; what it
    cannot answer goes to review. Returns counts by outcome."""
    cutoff = utcnow() - timedelta(seconds=older_than)
    counts = {"settled": 0, "review": 0, "unchanged": 0}
    with sessions() as session:
        payments = list(
            session.scalars(
                select(Payment.id)
                .where(Payment.state == PaymentState.PROCESSING, Payment.processing_since < cutoff)
                .limit(limit)
            )
        )
        refunds = list(
            session.scalars(
                select(Refund.id)
                .where(Refund.state == RefundState.PROCESSING, Refund.processing_since < cutoff)
                .limit(limit)
            )
        )
    for payment_id in payments:
        try:
            found = gateway.find_charge(payment_id)
        except GatewayUnavailable as exc:
            found, reason = None, f"stuck in processing; the gateway did not answer ({exc})"
        else:
            reason = "stuck in processing; the gateway has no charge for it"
        if found is None:
            outcome = give_up_payment(sessions, payment_id, reason)
            counts["review" if outcome else "unchanged"] += 1
            continue
        with sessions() as session:
            settled = settle_charge(session, payment_id, found)
            session.commit()
        counts["settled" if settled else "unchanged"] += 1
    for refund_id in refunds:
        try:
            answer = gateway.find_refund(refund_id)
        except GatewayUnavailable as exc:
            answer, reason = None, f"stuck in processing; the gateway did not answer ({exc})"
        else:
            reason = "stuck in processing; the gateway has no refund for it"
        if answer is None:
            counts["review" if give_up_refund(sessions, refund_id, reason) else "unchanged"] += 1
            continue
        with sessions() as session:
            done = settle_refund(session, refund_id, answer)
            session.commit()
        counts["settled" if done else "unchanged"] += 1
    return counts
