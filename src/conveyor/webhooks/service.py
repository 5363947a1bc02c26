"""Webhook endpoints and deliveries in the ledger: plain functions that take a Session.

Events become deliveries in the same transaction as whatever caused them (pass your
session to `emit_event`), and their delivery tasks are published only once that transaction
commits: a rolled-back change sends nothing, and a committed one is always delivered, since
the Beat dispatcher publishes any pending delivery whose message was lost.

A disabled endpoint still gets its events, as `paused` deliveries that wait: re-enabling it
releases them, oldest first. Nothing is lost while its owner fixes the receiver.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import structlog
from sqlalchemy import bindparam, delete, event, select, update
from sqlalchemy.orm import Session

from conveyor.core.celery_app import get_celery
from conveyor.core.db import session_scope
from conveyor.core.ledger import iso
from conveyor.core.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint, utcnow
from conveyor.core.netguard import BlockedDestination, InvalidUrl, NetPolicy
from conveyor.webhooks import events
from conveyor.webhooks.signing import generate_secret

log = structlog.get_logger("conveyor.webhooks")

DELIVER_TASK = "conveyor.webhooks.deliver"
MAX_URL_LENGTH = 2000
MAX_EVENTS = 100
_OUTBOX = "conveyor_webhook_outbox"
_HOOKED = "conveyor_webhook_outbox_hooked"


class EndpointError(ValueError):
    """Input that cannot make a valid endpoint, phrased for the person who sent it."""


class Status:
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    # Held while the endpoint is disabled; pending again when it is re-enabled.
    PAUSED = "paused"
    # Only in old data: before events were held, a disabled endpoint's deliveries were dropped.
    SKIPPED = "skipped"


# --- endpoints ---------------------------------------------------------------------------


def validate_url(url: str, policy: NetPolicy | None = None) -> str:
    url = url.strip()
    if not url:
        raise EndpointError("url: must not be empty")
    if len(url) > MAX_URL_LENGTH:
        raise EndpointError(f"url: at most {MAX_URL_LENGTH} characters")
    try:
        (policy or NetPolicy.from_settings()).check_url(url)
    except InvalidUrl as exc:
        raise EndpointError(f"url: {exc}") from None
    except BlockedDestination as exc:
        raise EndpointError(f"url: {exc}") from None
    return url


def validate_events(names: Iterable[str]) -> list[str]:
    unique = list(dict.fromkeys(name.strip() for name in names))
    if not unique:
        raise EndpointError("events: subscribe to at least one event type")
    if len(unique) > MAX_EVENTS:
        raise EndpointError(f"events: at most {MAX_EVENTS} event types")
    unknown = [name for name in unique if not events.is_known(name)]
    if unknown:
        raise EndpointError(
            f"events: unknown event type(s) {', '.join(unknown)}; "
            f"known: {', '.join(events.event_types())}"
        )
    return unique


def create_endpoint(
    session: Session,
    owner: str,
    url: str,
    event_types: Iterable[str],
    description: str | None = None,
    *,
    policy: NetPolicy | None = None,
) -> WebhookEndpoint:
    endpoint = WebhookEndpoint(
        id=uuid.uuid4().hex,
        owner=owner,
        url=validate_url(url, policy),
        events=validate_events(event_types),
        description=description,
        secret=generate_secret(),
        enabled=True,
        consecutive_failures=0,
        failing_since=None,
        created_at=utcnow(),
        updated_at=utcnow(),
    )
    session.add(endpoint)
    session.flush()
    return endpoint


def get_endpoint(session: Session, endpoint_id: str, owner: str | None) -> WebhookEndpoint | None:
    """The endpoint, or None if missing or someone else's (owner=None: anyone's)."""
    endpoint = session.get(WebhookEndpoint, endpoint_id)
    if endpoint is None or (owner is not None and endpoint.owner != owner):
        return None
    return endpoint


def list_endpoints(session: Session, owner: str | None) -> list[WebhookEndpoint]:
    query = select(WebhookEndpoint).order_by(WebhookEndpoint.created_at, WebhookEndpoint.id)
    if owner is not None:
        query = query.where(WebhookEndpoint.owner == owner)
    return list(session.scalars(query))


def update_endpoint(
    session: Session,
    endpoint: WebhookEndpoint,
    *,
    url: str | None = None,
    event_types: Iterable[str] | None = None,
    enabled: bool | None = None,
    description: str | None = None,
    policy: NetPolicy | None = None,
) -> WebhookEndpoint:
    if url is not None:
        endpoint.url = validate_url(url, policy)
    if event_types is not None:
        endpoint.events = validate_events(event_types)
    if description is not None:
        endpoint.description = description
    if enabled is True:
        # A fresh start: the owner says the receiver is fixed.
        endpoint.enabled = True
        endpoint.disabled_reason = None
        endpoint.consecutive_failures = 0
        endpoint.failing_since = None
    elif enabled is False and endpoint.enabled:
        endpoint.enabled = False
        endpoint.disabled_reason = "disabled through the API"
    endpoint.updated_at = utcnow()
    session.flush()
    if enabled is True:
        release_held(session, endpoint.id)
    elif enabled is False:
        hold_pending(session, endpoint.id)
    return endpoint


def delete_endpoint(session: Session, endpoint: WebhookEndpoint) -> None:
    # Explicit deletes, children first: no reliance on the database enforcing cascades.
    deliveries = select(WebhookDelivery.id).where(WebhookDelivery.endpoint_id == endpoint.id)
    session.execute(delete(WebhookAttempt).where(WebhookAttempt.delivery_id.in_(deliveries)))
    session.execute(delete(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint.id))
    session.delete(endpoint)
    session.flush()


def endpoint_to_dict(endpoint: WebhookEndpoint, *, with_secret: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": endpoint.id,
        "owner": endpoint.owner,
        "url": endpoint.url,
        "description": endpoint.description,
        "events": list(endpoint.events),
        "enabled": endpoint.enabled,
        "disabled_reason": endpoint.disabled_reason,
        "consecutive_failures": endpoint.consecutive_failures,
        "failing_since": iso(endpoint.failing_since),
        "created_at": iso(endpoint.created_at),
        "updated_at": iso(endpoint.updated_at),
    }
    if with_secret:
        out["secret"] = endpoint.secret
    return out


# --- deliveries --------------------------------------------------------------------------


def _timestamp(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def build_payload(
    event_type: str, data: dict[str, Any], at: datetime | None = None
) -> dict[str, Any]:
    """The body every receiver gets: `{"type", "timestamp", "data"}`."""
    # Round-trip through JSON now, so what is stored is exactly what will be sent.
    plain = json.loads(json.dumps(data, default=str))
    return {"type": event_type, "timestamp": _timestamp(at or utcnow()), "data": plain}


def create_delivery(
    session: Session, endpoint: WebhookEndpoint, payload: dict[str, Any]
) -> WebhookDelivery:
    """A delivery sent once the session commits; held (`paused`) if the endpoint is disabled."""
    now = utcnow()
    delivery = WebhookDelivery(
        id=f"msg_{uuid.uuid4().hex}",  # the webhook-id header: the same on every retry
        endpoint_id=endpoint.id,
        event_type=payload["type"],
        payload=payload,
        status=Status.PENDING if endpoint.enabled else Status.PAUSED,
        attempts=0,
        next_attempt_at=now if endpoint.enabled else None,
        created_at=now,
    )
    session.add(delivery)
    session.flush()
    if endpoint.enabled:
        publish_after_commit(session, [(delivery.id, 0)])
    return delivery


# Asked for every owned job that ends: built once, and answered without the ORM, since
# most owners have no endpoint subscribed.
_OWNER_SUBSCRIPTIONS = select(WebhookEndpoint.id, WebhookEndpoint.events).where(
    WebhookEndpoint.owner == bindparam("owner")
)


def subscribed_endpoints(session: Session, owner: str, event_type: str) -> list[WebhookEndpoint]:
    """The owner's endpoints subscribed to `event_type`, disabled ones too (they hold it)."""
    rows = session.connection().execute(_OWNER_SUBSCRIPTIONS, {"owner": owner})
    # Few endpoints per owner: filtering the JSON list here works alike on every database.
    ids = [endpoint_id for endpoint_id, subscribed in rows if event_type in subscribed]
    if not ids:
        return []
    query = select(WebhookEndpoint).where(WebhookEndpoint.id.in_(ids))
    return list(session.scalars(query.order_by(WebhookEndpoint.created_at, WebhookEndpoint.id)))


def hold_pending(session: Session, endpoint_id: str) -> int:
    """Pause the endpoint's pending deliveries (it was disabled); returns how many."""
    held = session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.endpoint_id == endpoint_id, WebhookDelivery.status == Status.PENDING)
        .values(status=Status.PAUSED, next_attempt_at=None)
        .execution_options(synchronize_session=False)
    )
    return int(getattr(held, "rowcount", 0) or 0)


def release_held(session: Session, endpoint_id: str) -> list[str]:
    """Make the endpoint's paused deliveries pending again and publish them, oldest first,
    once the session commits; returns their ids in that order."""
    rows = session.execute(
        select(WebhookDelivery.id, WebhookDelivery.attempts)
        .where(WebhookDelivery.endpoint_id == endpoint_id, WebhookDelivery.status == Status.PAUSED)
        .order_by(WebhookDelivery.created_at, WebhookDelivery.id)
    ).all()
    if not rows:
        return []
    # One statement for the lot; one held by a transaction still committing is left to the
    # dispatcher, which releases any paused delivery of an enabled endpoint.
    session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.endpoint_id == endpoint_id, WebhookDelivery.status == Status.PAUSED)
        .values(status=Status.PENDING, next_attempt_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    items = [(str(delivery_id), int(attempts)) for delivery_id, attempts in rows]
    publish_after_commit(session, items)
    log.info("webhooks.released", endpoint_id=endpoint_id, deliveries=len(items))
    return [delivery_id for delivery_id, _ in items]


def emit_event(
    session: Session | None, owner: str, event_type: str, data: dict[str, Any]
) -> list[str]:
    """Queue `event_type` for every endpoint of `owner` subscribed to it (held for a
    disabled one until it is re-enabled).

    With a session, the deliveries join its transaction and go out when it commits; with
    None, they are committed (and sent) at once. Returns the delivery ids.
    """
    if not events.is_known(event_type):
        raise ValueError(f"unknown webhook event type {event_type!r}: register_event_type() it")
    if session is None:
        with session_scope() as own:
            return emit_event(own, owner, event_type, data)
    targets = subscribed_endpoints(session, owner, event_type)
    if not targets:
        return []
    payload = build_payload(event_type, data)
    ids = [create_delivery(session, endpoint, payload).id for endpoint in targets]
    log.info("webhooks.event", event_type=event_type, owner=owner, deliveries=len(ids))
    return ids


def send_test(session: Session, endpoint: WebhookEndpoint) -> WebhookDelivery:
    payload = build_payload(
        events.TEST_EVENT,
        {"endpoint_id": endpoint.id, "message": "a test event from Conveyor"},
    )
    return create_delivery(session, endpoint, payload)


def list_deliveries(
    session: Session, endpoint_id: str, *, limit: int = 20, status: str | None = None
) -> list[tuple[WebhookDelivery, list[WebhookAttempt]]]:
    """Newest first, each with its attempt log."""
    query = select(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint_id)
    if status:
        query = query.where(WebhookDelivery.status == status)
    order = (WebhookDelivery.created_at.desc(), WebhookDelivery.id.desc())
    deliveries = list(session.scalars(query.order_by(*order).limit(limit)))
    attempts: dict[str, list[WebhookAttempt]] = {delivery.id: [] for delivery in deliveries}
    if deliveries:
        rows = session.scalars(
            select(WebhookAttempt)
            .where(WebhookAttempt.delivery_id.in_(list(attempts)))
            .order_by(WebhookAttempt.attempt, WebhookAttempt.id)
        )
        for row in rows:
            attempts[row.delivery_id].append(row)
    return [(delivery, attempts[delivery.id]) for delivery in deliveries]


def attempt_to_dict(attempt: WebhookAttempt) -> dict[str, Any]:
    return {
        "attempt": attempt.attempt,
        "status_code": attempt.status_code,
        "duration_ms": attempt.duration_ms,
        "response_excerpt": attempt.response_excerpt,
        "error": attempt.error,
        "created_at": iso(attempt.created_at),
    }


def delivery_to_dict(
    delivery: WebhookDelivery, attempts: Sequence[WebhookAttempt] = ()
) -> dict[str, Any]:
    return {
        "id": delivery.id,
        "endpoint_id": delivery.endpoint_id,
        "event_type": delivery.event_type,
        "status": delivery.status,
        "attempts": delivery.attempts,
        "last_status_code": delivery.last_status_code,
        "last_duration_ms": delivery.last_duration_ms,
        "last_error": delivery.last_error,
        "next_attempt_at": iso(delivery.next_attempt_at) if delivery.status == "pending" else None,
        "created_at": iso(delivery.created_at),
        "delivered_at": iso(delivery.delivered_at),
        "payload": delivery.payload,
        "attempt_log": [attempt_to_dict(attempt) for attempt in attempts],
    }


# --- publishing ----------------------------------------------------------------------------


def publish_delivery(
    delivery_id: str, expected_attempts: int, countdown: float | None = None
) -> None:
    """Send the delivery task. `expected_attempts` makes duplicate messages harmless."""
    get_celery().send_task(
        DELIVER_TASK, args=[delivery_id, expected_attempts], countdown=countdown or None
    )


def publish_after_commit(session: Session, items: list[tuple[str, int]]) -> None:
    """Publish these deliveries once `session` commits; forget them if it rolls back."""
    session.info.setdefault(_OUTBOX, []).extend(items)
    if not session.info.get(_HOOKED):
        session.info[_HOOKED] = True
        event.listen(session, "after_commit", _flush_outbox)
        event.listen(session, "after_rollback", _drop_outbox)


def _flush_outbox(session: Session) -> None:
    items: list[tuple[str, int]] = session.info.pop(_OUTBOX, [])
    for delivery_id, expected in items:
        try:
            publish_delivery(delivery_id, expected)
        except Exception as exc:
            # Committed already: the dispatcher publishes it shortly. Never fail the commit.
            log.warning("webhooks.publish_failed", delivery_id=delivery_id, error=str(exc))


def _drop_outbox(session: Session) -> None:
    session.info.pop(_OUTBOX, None)
