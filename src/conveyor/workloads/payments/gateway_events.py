"""Events the gateway posts to us: verified by signature, applied once per event id.

The event row and the state change it causes commit together; a redelivered event hits
the primary key and changes nothing. Events only ever settle what is unsettled, so an
event arriving before or after the charging task's own answer is harmless.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from sqlalchemy import insert, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from conveyor.webhooks.signing import WebhookVerificationError, verify
from conveyor.workloads.payments.gateway import ChargeResult, RefundResult
from conveyor.workloads.payments.models import GatewayEvent, Refund
from conveyor.workloads.payments.settlement import settle_charge, settle_refund

__all__ = ["WebhookVerificationError", "apply_event", "parse_verified"]


class BadEvent(ValueError):
    pass


def parse_verified(secret: str, headers: Mapping[str, str], body: bytes) -> dict[str, Any]:
    """The event, if the signature is the gateway's; WebhookVerificationError or BadEvent."""
    verify(secret, headers, body)
    try:
        event = json.loads(body)
    except ValueError:
        raise BadEvent("body is not JSON") from None
    if not isinstance(event, dict) or not isinstance(event.get("id"), str):
        raise BadEvent("an event needs an id")
    if not isinstance(event.get("type"), str) or not isinstance(event.get("data"), dict):
        raise BadEvent("an event needs a type and a data object")
    return event


def _payment_key(data: dict[str, Any]) -> str | None:
    metadata = data.get("metadata") if isinstance(data.get("metadata"), dict) else {}
    key = data.get("key") or (metadata or {}).get("payment_id")
    return str(key) if key else None


def _settle(session: Session, event: dict[str, Any]) -> tuple[str | None, str]:
    """(payment id, what happened) for one event."""
    kind: str = event["type"]
    data: dict[str, Any] = event["data"]
    if kind in {"charge.succeeded", "charge.failed"}:
        payment_id = _payment_key(data)
        if payment_id is None:
            return None, "ignored: no payment key"
        result = ChargeResult(
            status="succeeded" if kind == "charge.succeeded" else "failed",
            charge_id=data.get("id"),
            amount=int(data.get("amount") or 0),
            failure_code=data.get("failure_code"),
            failure_message=data.get("failure_message"),
        )
        settled = settle_charge(session, payment_id, result)
        return payment_id, "settled" if settled else "already settled"
    if kind == "refund.succeeded":
        refund_id = data.get("key")
        refund = session.get(Refund, str(refund_id)) if refund_id else None
        if refund is None:
            return None, "ignored: unknown refund"
        answer = RefundResult("succeeded", data.get("id"), int(data.get("amount") or 0))
        done = settle_refund(session, refund.id, answer)
        return refund.payment_id, "settled" if done else "already settled"
    return None, "ignored: event type not handled"


def apply_event(session: Session, event: dict[str, Any]) -> tuple[bool, str]:
    """(first time seen, outcome). Commits."""
    try:
        session.execute(
            insert(GatewayEvent).values(
                id=event["id"][:100], type=event["type"][:60], payload=event
            )
        )
        session.flush()
    except IntegrityError:
        session.rollback()
        return False, "duplicate"
    payment_id, outcome = _settle(session, event)
    session.execute(
        update(GatewayEvent)
        .where(GatewayEvent.id == event["id"][:100])
        .values(payment_id=payment_id, outcome=outcome)
    )
    try:
        session.commit()
    except IntegrityError:
        # The same event, delivered twice at once: the other delivery applied it.
        session.rollback()
        return False, "duplicate"
    return True, outcome
