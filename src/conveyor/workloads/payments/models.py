"""Tables of the payments workload: payments, refunds, the balance ledger, gateway events.

Money is BigInteger minor units everywhere. `amount_refunded` counts refunds the gateway
confirmed; `amount_refund_pending` holds what requested refunds have reserved, so the
reservation and the cap (`refunded + pending <= captured`) are one conditional UPDATE.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from conveyor.core.models import Base, utcnow


class PaymentState(StrEnum):
    PENDING = "pending"
    PROCESSING = "processing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    # The gateway could not say what happened; a person (or a late answer) settles it.
    REQUIRES_REVIEW = "requires_review"


class RefundState(StrEnum):
    PENDING = "pending"
    PROCESSING = "processing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    REQUIRES_REVIEW = "requires_review"


class Payment(Base):
    __tablename__ = "conveyor_payments"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # the gateway's key too
    owner: Mapped[str] = mapped_column(String(120))
    customer_id: Mapped[str] = mapped_column(String(120))
    amount: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    # The gateway's payment method id (`pm_...`); a card number is never stored (cards.py).
    payment_method: Mapped[str] = mapped_column(String(100))
    card_brand: Mapped[str | None] = mapped_column(String(20))
    card_last4: Mapped[str | None] = mapped_column(String(4))
    description: Mapped[str | None] = mapped_column(String(500))
    state: Mapped[str] = mapped_column(String(20), default=PaymentState.PENDING)
    amount_captured: Mapped[int] = mapped_column(BigInteger, default=0)
    amount_refunded: Mapped[int] = mapped_column(BigInteger, default=0)
    amount_refund_pending: Mapped[int] = mapped_column(BigInteger, default=0)
    gateway_charge_id: Mapped[str | None] = mapped_column(String(100))
    failure_code: Mapped[str | None] = mapped_column(String(64))
    failure_message: Mapped[str | None] = mapped_column(String(500))
    job_id: Mapped[str | None] = mapped_column(String(64))
    # Charge attempts started; from the second on, the gateway is asked before charging.
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    processing_since: Mapped[datetime | None] = mapped_column()
    settled_at: Mapped[datetime | None] = mapped_column()

    __table_args__ = (
        Index("ix_conveyor_payments_owner_created", "owner", "created_at", "id"),
        Index("ix_conveyor_payments_owner_customer", "owner", "customer_id"),
        Index("ix_conveyor_payments_state_since", "state", "processing_since"),
        # The database itself refuses a refund total above the capture.
        CheckConstraint(
            "amount_refunded + amount_refund_pending <= amount_captured",
            name="ck_conveyor_payments_refunds_within_capture",
        ),
        CheckConstraint("amount > 0", name="ck_conveyor_payments_amount_positive"),
    )


class Refund(Base):
    __tablename__ = "conveyor_payment_refunds"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # the gateway's key too
    payment_id: Mapped[str] = mapped_column(
        String(40), ForeignKey("conveyor_payments.id"), index=True
    )
    owner: Mapped[str] = mapped_column(String(120))
    amount: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    state: Mapped[str] = mapped_column(String(20), default=RefundState.PENDING)
    gateway_refund_id: Mapped[str | None] = mapped_column(String(100))
    failure_code: Mapped[str | None] = mapped_column(String(64))
    failure_message: Mapped[str | None] = mapped_column(String(500))
    job_id: Mapped[str | None] = mapped_column(String(64))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    processing_since: Mapped[datetime | None] = mapped_column()
    settled_at: Mapped[datetime | None] = mapped_column()

    __table_args__ = (
        Index("ix_conveyor_payment_refunds_state_since", "state", "processing_since"),
    )


class BalanceEntry(Base):
    """Append-only: +amount when a charge succeeds, -amount when a refund succeeds.

    `entry_key` ("charge:<payment>", "refund:<refund>") is unique, so no outcome can be
    booked twice whatever the number of runs that saw it.
    """

    __tablename__ = "conveyor_payment_balance_entries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    entry_key: Mapped[str] = mapped_column(String(60), unique=True)
    payment_id: Mapped[str] = mapped_column(
        String(40), ForeignKey("conveyor_payments.id"), index=True
    )
    refund_id: Mapped[str | None] = mapped_column(String(40))
    owner: Mapped[str] = mapped_column(String(120))
    kind: Mapped[str] = mapped_column(String(10))
    amount: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class GatewayEvent(Base):
    """An event the gateway posted; the primary key makes a redelivered event a no-op."""

    __tablename__ = "conveyor_payment_gateway_events"

    id: Mapped[str] = mapped_column(String(100), primary_key=True)
    type: Mapped[str] = mapped_column(String(60))
    payment_id: Mapped[str | None] = mapped_column(String(40))
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    outcome: Mapped[str | None] = mapped_column(Text)
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
