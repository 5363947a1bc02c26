"""Payments and refunds as the API sees them: create, reserve, read, list.

A refund reserves its amount on the payment with one conditional UPDATE
(`refunded + pending + amount <= captured`), so concurrent refunds can never together
exceed what was captured, on PostgreSQL (the row lock re-checks the condition) and on
SQLite (writes are serialized) alike.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import Session

from conveyor.core.ledger import as_utc, iso
from conveyor.core.models import utcnow
from conveyor.workloads.payments import cards
from conveyor.workloads.payments.currencies import format_amount
from conveyor.workloads.payments.models import (
    BalanceEntry,
    Payment,
    PaymentState,
    Refund,
    RefundState,
)


class RefundRefused(Exception):
    """A refund the payment cannot take; `status_code` 409 (wrong state) or 422 (amount)."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message


class BadCursor(ValueError):
    pass


@dataclass(frozen=True)
class NewPayment:
    owner: str
    customer_id: str
    amount: int
    currency: str
    payment_method: str  # the gateway's id, from cards.stored_method
    description: str | None = None
    card_brand: str | None = None
    card_last4: str | None = None


def new_payment_id() -> str:
    return f"pay_{uuid.uuid4().hex}"


def new_refund_id() -> str:
    return f"re_{uuid.uuid4().hex}"


def create_payment(session: Session, new: NewPayment, *, job_id: str) -> Payment:
    if cards.card_digits(new.payment_method) is not None:
        # The last line: whatever the caller, a card number never reaches the table.
        raise ValueError("payment_method must be a payment method id, never a card number")
    now = utcnow()
    payment = Payment(
        id=new_payment_id(),
        owner=new.owner,
        customer_id=new.customer_id,
        amount=new.amount,
        currency=new.currency,
        payment_method=new.payment_method,
        card_brand=new.card_brand,
        card_last4=new.card_last4,
        description=new.description,
        state=PaymentState.PENDING,
        amount_captured=0,
        amount_refunded=0,
        amount_refund_pending=0,
        job_id=job_id,
        attempts=0,
        created_at=now,
        updated_at=now,
    )
    session.add(payment)
    session.flush()
    return payment


def fail_unqueued(session: Session, payment_id: str, reason: str) -> None:
    """A payment whose charge could not be queued: failed before any money moved."""
    session.execute(
        update(Payment)
        .where(Payment.id == payment_id, Payment.state == PaymentState.PENDING)
        .values(
            state=PaymentState.FAILED,
            failure_code="not_queued",
            failure_message=reason[:500],
            updated_at=utcnow(),
        )
    )


def reserve_refund(session: Session, payment: Payment, amount: int, *, job_id: str) -> Refund:
    """Reserve `amount` on the payment and record the refund as pending (no commit)."""
    now = utcnow()
    reserved = session.execute(
        update(Payment)
        .where(
            Payment.id == payment.id,
            Payment.state == PaymentState.SUCCEEDED,
            Payment.amount_refunded + Payment.amount_refund_pending + amount
            <= Payment.amount_captured,
        )
        .values(amount_refund_pending=Payment.amount_refund_pending + amount, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    if int(getattr(reserved, "rowcount", 0)) != 1:
        session.refresh(payment)
        if payment.state != PaymentState.SUCCEEDED:
            raise RefundRefused(
                409, f"payment is {payment.state}; only a succeeded payment can be refunded"
            )
        left = payment.amount_captured - payment.amount_refunded - payment.amount_refund_pending
        raise RefundRefused(
            422,
            f"amount: {format_amount(amount, payment.currency)} is more than can still be "
            f"refunded ({format_amount(max(left, 0), payment.currency)})",
        )
    refund = Refund(
        id=new_refund_id(),
        payment_id=payment.id,
        owner=payment.owner,
        amount=amount,
        currency=payment.currency,
        state=RefundState.PENDING,
        job_id=job_id,
        attempts=0,
        created_at=now,
        updated_at=now,
    )
    session.add(refund)
    session.flush()
    return refund


def get_payment(session: Session, payment_id: str, owner: str | None) -> Payment | None:
    """The payment, or None if missing or another owner's (owner=None: anyone's)."""
    payment = session.get(Payment, payment_id)
    if payment is None or (owner is not None and payment.owner != owner):
        return None
    return payment


def refunds_of(session: Session, payment_id: str) -> list[Refund]:
    query = select(Refund).where(Refund.payment_id == payment_id)
    return list(session.scalars(query.order_by(Refund.created_at, Refund.id)))


def get_refund(session: Session, refund_id: str, owner: str | None) -> Refund | None:
    refund = session.get(Refund, refund_id)
    if refund is None or (owner is not None and refund.owner != owner):
        return None
    return refund


def _encode_cursor(payment: Payment) -> str:
    raw = f"{iso(payment.created_at)}|{payment.id}"
    return base64.urlsafe_b64encode(raw.encode()).decode()


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        stamp, _, payment_id = base64.urlsafe_b64decode(cursor.encode()).decode().partition("|")
        moment = as_utc(datetime.fromisoformat(stamp))
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise BadCursor("cursor: not a cursor this API returned") from None
    if moment is None or not payment_id:
        raise BadCursor("cursor: not a cursor this API returned")
    return moment, payment_id


def list_payments(
    session: Session,
    *,
    owner: str | None,
    customer_id: str | None = None,
    state: str | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> tuple[list[Payment], str | None]:
    """Newest first, `limit` per page; the cursor of the next page or None."""
    query = select(Payment)
    if owner is not None:
        query = query.where(Payment.owner == owner)
    if customer_id is not None:
        query = query.where(Payment.customer_id == customer_id)
    if state is not None:
        query = query.where(Payment.state == state)
    if cursor:
        moment, last_id = _decode_cursor(cursor)
        query = query.where(
            or_(
                Payment.created_at < moment,
                and_(Payment.created_at == moment, Payment.id < last_id),
            )
        )
    order = (Payment.created_at.desc(), Payment.id.desc())
    rows = list(session.scalars(query.order_by(*order).limit(limit + 1)))
    next_cursor = _encode_cursor(rows[limit - 1]) if len(rows) > limit else None
    return rows[:limit], next_cursor


def balance_of(session: Session, payment_id: str) -> int:
    """The sum of the payment's balance entries: captured minus refunded, always."""
    total = session.scalar(
        select(func.coalesce(func.sum(BalanceEntry.amount), 0)).where(
            BalanceEntry.payment_id == payment_id
        )
    )
    return int(total or 0)


def refund_to_dict(refund: Refund) -> dict[str, Any]:
    return {
        "id": refund.id,
        "payment_id": refund.payment_id,
        "amount": refund.amount,
        "currency": refund.currency,
        "status": refund.state,
        "job_id": refund.job_id,
        "failure_code": refund.failure_code,
        "failure_message": refund.failure_message,
        "created_at": iso(refund.created_at),
        "settled_at": iso(refund.settled_at),
    }


def payment_to_dict(payment: Payment, refunds: list[Refund] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": payment.id,
        "job_id": payment.job_id,
        "status": payment.state,
        "amount": payment.amount,
        "currency": payment.currency,
        "customer_id": payment.customer_id,
        "payment_method": payment.payment_method,
        "card": (
            {"brand": payment.card_brand, "last4": payment.card_last4}
            if payment.card_brand or payment.card_last4
            else None
        ),
        "description": payment.description,
        "amount_captured": payment.amount_captured,
        "amount_refunded": payment.amount_refunded,
        "amount_refund_pending": payment.amount_refund_pending,
        "failure_code": payment.failure_code,
        "failure_message": payment.failure_message,
        "attempts": payment.attempts,
        "created_at": iso(payment.created_at),
        "settled_at": iso(payment.settled_at),
    }
    if refunds is not None:
        out["refunds"] = [
            {"id": r.id, "amount": r.amount, "status": r.state, "job_id": r.job_id} for r in refunds
        ]
    return out
