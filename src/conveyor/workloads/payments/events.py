"""The webhook events of the payments workload, and what they carry."""

from __future__ import annotations

from typing import Any

from conveyor.core.ledger import iso
from conveyor.webhooks.events import register_event_type
from conveyor.workloads.payments.models import Payment, Refund

PAYMENT_SUCCEEDED = register_event_type("payment.succeeded", "A payment was charged.")
PAYMENT_FAILED = register_event_type(
    "payment.failed", "A payment failed (declined, or refused by the gateway)."
)
REFUND_SUCCEEDED = register_event_type("refund.succeeded", "A refund was paid back.")
REFUND_FAILED = register_event_type("refund.failed", "A refund was refused by the gateway.")


def payment_data(payment: Payment) -> dict[str, Any]:
    return {
        "id": payment.id,
        "status": payment.state,
        "amount": payment.amount,
        "currency": payment.currency,
        "customer_id": payment.customer_id,
        "amount_captured": payment.amount_captured,
        "failure_code": payment.failure_code,
        "failure_message": payment.failure_message,
        "settled_at": iso(payment.settled_at),
    }


def refund_data(refund: Refund) -> dict[str, Any]:
    return {
        "id": refund.id,
        "payment_id": refund.payment_id,
        "status": refund.state,
        "amount": refund.amount,
        "currency": refund.currency,
        "failure_code": refund.failure_code,
        "failure_message": refund.failure_message,
        "settled_at": iso(refund.settled_at),
    }
