"""Delivering one attempt of a webhook, and deciding what happens after it.

Each delivery task message carries the number of attempts the delivery had when it was
published; an attempt starts only by moving that number on by one, in one conditional
UPDATE. So a duplicate message (a redelivery by Redis, a dispatcher republishing something
already queued) finds the number moved on and does nothing: one attempt per number.

Retries follow `CONVEYOR_WEBHOOK_RETRY_SCHEDULE`. A short wait is a Celery countdown; a wait
longer than half the Redis visibility timeout is not, since Redis would hand the waiting
message to a second worker: the delivery keeps `next_attempt_at` and the Beat task
`conveyor.webhooks.dispatch_due` publishes it when due. The same dispatcher also picks up
deliveries whose message was lost, and attempts whose worker died mid-request.

An endpoint is disabled once its deliveries have failed, with no success in between, for
`CONVEYOR_WEBHOOK_DISABLE_AFTER_SECONDS` (like Svix): a window of time rather than a count,
so a short outage under heavy traffic is retried, not punished. Its deliveries are then held
(`paused`) until it is re-enabled.
"""

from __future__ import annotations

import json
import time
import unicodedata
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
import structlog
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from conveyor.core.db import session_scope
from conveyor.core.ledger import as_utc, iso
from conveyor.core.metrics import webhook_deliveries
from conveyor.core.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint, utcnow
from conveyor.core.netguard import BlockedDestination, GuardedBackend, NetPolicy, guarded_client
from conveyor.core.settings import Settings, get_settings
from conveyor.webhooks import events, service
from conveyor.webhooks.service import Status
from conveyor.webhooks.signing import signature_headers

log = structlog.get_logger("conveyor.webhooks")

USER_AGENT = "Conveyor-Webhooks/0.1"
EXCERPT_BYTES = 1024  # read at most this much of a receiver's answer
EXCERPT_CHARS = 200  # and keep at most this many printable characters of it
# An attempt in flight holds the delivery this long past its timeout before the
# dispatcher assumes its worker died and publishes it again.
LEASE_MARGIN_SECONDS = 60
# The dispatcher leaves a due delivery this long to the message already published for it.
DISPATCH_GRACE_SECONDS = 120
# After publishing, the dispatcher waits this long before publishing the same one again.
REPUBLISH_AFTER_SECONDS = 600
DISPATCH_BATCH = 500
# A delivery held just as its endpoint was re-enabled is this young at most (a day: even
# with Beat stopped for hours); older held ones are not looked at on every tick.
STRAGGLER_AGE = timedelta(days=1)


@dataclass(frozen=True)
class Claim:
    delivery_id: str
    attempt: int
    endpoint_id: str
    url: str
    secret: str
    payload: dict[str, Any]


@dataclass(frozen=True)
class AttemptResult:
    status_code: int | None
    duration_ms: float
    excerpt: str | None = None
    error: str | None = None
    refused: bool = False

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def next_delay(attempt: int, settings: Settings) -> float | None:
    """Seconds until the retry after failed attempt number `attempt`; None when out."""
    schedule = settings.webhook_retry_delays
    return schedule[attempt - 1] if attempt <= len(schedule) else None


def fits_countdown(delay: float, settings: Settings) -> bool:
    return delay < settings.visibility_timeout / 2


def window_elapsed(failing_since: datetime | None, now: datetime, settings: Settings) -> bool:
    """Have the endpoint's deliveries failed, none succeeding, for the whole window?"""
    since = as_utc(failing_since)
    if since is None:
        return False
    return (now - since).total_seconds() >= settings.webhook_disable_after_seconds


def _span(seconds: float) -> str:
    for unit, size in (("days", 86_400), ("hours", 3600), ("minutes", 60)):
        if seconds >= 2 * size:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:.0f}s"


def claim(
    session: Session, delivery_id: str, expected_attempts: int, *, now: datetime, lease: float
) -> Claim | None:
    """Start attempt `expected_attempts + 1`, or None if this message is stale."""
    delivery = session.scalars(
        update(WebhookDelivery)
        .where(
            WebhookDelivery.id == delivery_id,
            WebhookDelivery.status == Status.PENDING,
            WebhookDelivery.attempts == expected_attempts,
        )
        .values(
            attempts=WebhookDelivery.attempts + 1,
            next_attempt_at=now + timedelta(seconds=lease),
        )
        .returning(WebhookDelivery)
        .execution_options(synchronize_session=False, populate_existing=True)
    ).first()
    if delivery is None:
        return None
    endpoint = session.get(WebhookEndpoint, delivery.endpoint_id)
    if endpoint is None or not endpoint.enabled:
        # Published before its endpoint was disabled: held with the rest, not attempted.
        session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id == delivery_id)
            .values(attempts=expected_attempts, status=Status.PAUSED, next_attempt_at=None)
            .execution_options(synchronize_session=False)
        )
        return None
    return Claim(
        delivery_id=delivery.id,
        attempt=delivery.attempts,
        endpoint_id=endpoint.id,
        url=endpoint.url,
        secret=endpoint.secret,
        payload=dict(delivery.payload),
    )


def encode_body(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def sanitize_excerpt(raw: bytes) -> str:
    """A short, printable excerpt: a receiver's answer is shown to people (API, dashboard,
    terminal), so no control characters, line breaks or escape sequences survive."""
    text = raw.decode("utf-8", errors="replace")
    # Categories C (controls, format, private use, ...) and Z (separators) become spaces.
    kept = "".join(
        char if not unicodedata.category(char).startswith(("C", "Z")) else " " for char in text
    )
    return " ".join(kept.split())[:EXCERPT_CHARS]


def _excerpt(response: httpx.Response) -> str:
    # Raw bytes, and only the first KB: a receiver's reply never fills memory or the ledger.
    taken = bytearray()
    for chunk in response.iter_raw():
        taken.extend(chunk[: EXCERPT_BYTES - len(taken)])
        if len(taken) >= EXCERPT_BYTES:
            break
    return sanitize_excerpt(bytes(taken))


def send(
    target: Claim,
    *,
    timeout: float,
    policy: NetPolicy,
    backend: GuardedBackend | None = None,
) -> AttemptResult:
    """POST the signed payload once. Never raises: every failure is an AttemptResult.

    Redirects are not followed: a 3xx is a failed attempt, and the owner should register
    the final URL. (The guard would check each hop; not following keeps a delivery to
    exactly the URL its owner registered.)
    """
    body = encode_body(target.payload)
    headers = {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "accept-encoding": "identity",
        **signature_headers(target.secret, target.delivery_id, body),
    }
    started = time.perf_counter()

    def elapsed() -> float:
        return round((time.perf_counter() - started) * 1000, 2)

    try:
        with (
            guarded_client(policy, backend=backend, timeout=timeout) as client,
            client.stream("POST", target.url, content=body, headers=headers) as response,
        ):
            excerpt = _excerpt(response)
            code = response.status_code
    except BlockedDestination as exc:  # logged by the guard, recorded on the attempt
        return AttemptResult(None, elapsed(), error=str(exc), refused=True)
    except httpx.TimeoutException as exc:
        return AttemptResult(None, elapsed(), error=f"timed out after {timeout:g}s ({exc!r})")
    except httpx.HTTPError as exc:
        return AttemptResult(None, elapsed(), error=f"{type(exc).__name__}: {exc}")
    except Exception as exc:  # includes a soft time limit: recorded like any failure
        log.exception("webhooks.send_error", delivery_id=target.delivery_id)
        return AttemptResult(None, elapsed(), error=f"unexpected {type(exc).__name__}: {exc}")
    error = None
    if 300 <= code < 400:
        location = response.headers.get("location", "")
        error = f"HTTP {code}: redirects are not followed (Location: {location[:500]})"
    elif not 200 <= code < 300:
        error = f"HTTP {code}"
    return AttemptResult(code, elapsed(), excerpt=excerpt, error=error)


def disable_endpoint(session: Session, endpoint_id: str, reason: str) -> bool:
    """Disable the endpoint, hold its pending deliveries and tell the owner; False if it
    was disabled already."""
    endpoint = session.scalars(
        update(WebhookEndpoint)
        .where(WebhookEndpoint.id == endpoint_id, WebhookEndpoint.enabled.is_(True))
        .values(enabled=False, disabled_reason=reason, updated_at=utcnow())
        .returning(WebhookEndpoint)
        .execution_options(synchronize_session=False, populate_existing=True)
    ).first()
    if endpoint is None:
        return False
    held = service.hold_pending(session, endpoint_id)
    log.warning(
        "webhooks.endpoint_disabled",
        endpoint_id=endpoint_id,
        owner=endpoint.owner,
        url=endpoint.url,
        reason=reason,
        held=held,
    )
    # To the owner's other endpoints that asked for it; sent when the caller commits.
    service.emit_event(
        session,
        endpoint.owner,
        events.ENDPOINT_DISABLED,
        {
            "endpoint_id": endpoint.id,
            "url": endpoint.url,
            "reason": reason,
            "consecutive_failures": endpoint.consecutive_failures,
            "failing_since": iso(endpoint.failing_since),
        },
    )
    return True


def record(
    session: Session,
    target: Claim,
    result: AttemptResult,
    *,
    settings: Settings,
    now: datetime | None = None,
) -> float | None:
    """Log the attempt and settle the delivery; returns a countdown for the retry to
    publish now, or None (delivered, out of attempts, held, or left to the dispatcher)."""
    now = now or utcnow()
    if session.get(WebhookDelivery, target.delivery_id) is None:
        return None  # its endpoint was deleted while the request was out
    outcome = "delivered" if result.ok else ("refused" if result.refused else "failed")
    webhook_deliveries.labels(outcome).inc()
    session.add(
        WebhookAttempt(
            delivery_id=target.delivery_id,
            attempt=target.attempt,
            status_code=result.status_code,
            duration_ms=result.duration_ms,
            response_excerpt=result.excerpt,
            error=result.error,
            created_at=now,
        )
    )
    values: dict[str, Any] = {
        "last_status_code": result.status_code,
        "last_duration_ms": result.duration_ms,
        "last_response_excerpt": result.excerpt,
        "last_error": result.error,
    }
    # Only the attempt that claimed this number may settle it.
    mine = update(WebhookDelivery).where(
        WebhookDelivery.id == target.delivery_id,
        WebhookDelivery.status == Status.PENDING,
        WebhookDelivery.attempts == target.attempt,
    )
    endpoint_row = update(WebhookEndpoint).where(WebhookEndpoint.id == target.endpoint_id)
    if result.ok:
        # Also when the endpoint was disabled while this request was out: the receiver has
        # it, so it must not be held and sent again.
        session.execute(
            update(WebhookDelivery)
            .where(
                WebhookDelivery.id == target.delivery_id,
                WebhookDelivery.status.in_((Status.PENDING, Status.PAUSED)),
                WebhookDelivery.attempts == target.attempt,
            )
            .values(**values, status=Status.SUCCEEDED, delivered_at=now, next_attempt_at=None)
        )
        session.execute(endpoint_row.values(consecutive_failures=0, failing_since=None))
        return None
    streak = session.execute(
        endpoint_row.values(
            consecutive_failures=WebhookEndpoint.consecutive_failures + 1,
            # The streak begins with its first failure and survives until a success.
            failing_since=func.coalesce(WebhookEndpoint.failing_since, now),
        )
        .returning(WebhookEndpoint.consecutive_failures, WebhookEndpoint.failing_since)
        .execution_options(synchronize_session=False)
    ).first()
    if streak is not None and window_elapsed(streak.failing_since, now, settings):
        # Held, not failed: it goes out with the rest once the endpoint is re-enabled.
        session.execute(mine.values(**values, status=Status.PAUSED, next_attempt_at=None))
        failing_for = (now - (as_utc(streak.failing_since) or now)).total_seconds()
        disable_endpoint(
            session,
            target.endpoint_id,
            f"every delivery failed for {_span(failing_for)} "
            f"({streak.consecutive_failures} attempts since {iso(streak.failing_since)}); "
            f"last: {result.error}"[:500],
        )
        return None
    delay = next_delay(target.attempt, settings)
    if delay is None:
        session.execute(mine.values(**values, status=Status.FAILED, next_attempt_at=None))
        return None
    session.execute(mine.values(**values, next_attempt_at=now + timedelta(seconds=delay)))
    return delay if fits_countdown(delay, settings) else None


def run_attempt(
    delivery_id: str,
    expected_attempts: int,
    *,
    settings: Settings | None = None,
    policy: NetPolicy | None = None,
    backend: GuardedBackend | None = None,
) -> str:
    """One attempt, end to end: claim, send (outside any transaction), record, reschedule."""
    settings = settings or get_settings()
    lease = settings.webhook_timeout_seconds + LEASE_MARGIN_SECONDS
    with session_scope(settings) as session:
        target = claim(session, delivery_id, expected_attempts, now=utcnow(), lease=lease)
    if target is None:
        return "stale"
    result = send(
        target,
        timeout=settings.webhook_timeout_seconds,
        policy=policy or NetPolicy.from_settings(settings),
        backend=backend,
    )
    with session_scope(settings) as session:
        countdown = record(session, target, result, settings=settings)
    if countdown is not None:
        try:
            service.publish_delivery(target.delivery_id, target.attempt, countdown=countdown)
        except Exception as exc:
            log.warning("webhooks.publish_failed", delivery_id=delivery_id, error=str(exc))
    (log.info if result.ok else log.warning)(
        "webhooks.attempt",
        delivery_id=delivery_id,
        attempt=target.attempt,
        status_code=result.status_code,
        duration_ms=result.duration_ms,
        error=result.error,
    )
    return "delivered" if result.ok else "failed"


def due_deliveries(
    session: Session, *, now: datetime | None = None, limit: int = DISPATCH_BATCH
) -> list[tuple[str, int]]:
    """Pending deliveries nobody is taking care of, marked as published; (id, attempts)."""
    now = now or utcnow()
    cutoff = now - timedelta(seconds=DISPATCH_GRACE_SECONDS)
    release_stragglers(session, now=now, due_at=cutoff)
    rows = session.execute(
        select(WebhookDelivery.id, WebhookDelivery.attempts)
        .where(WebhookDelivery.status == Status.PENDING, WebhookDelivery.next_attempt_at <= cutoff)
        .order_by(WebhookDelivery.next_attempt_at)
        .limit(limit)
    ).all()
    due = []
    for delivery_id, attempts in rows:
        # Conditional: two dispatchers racing publish each delivery once between them.
        taken = session.execute(
            update(WebhookDelivery)
            .where(
                WebhookDelivery.id == delivery_id,
                WebhookDelivery.status == Status.PENDING,
                WebhookDelivery.attempts == attempts,
                WebhookDelivery.next_attempt_at <= cutoff,
            )
            .values(next_attempt_at=now + timedelta(seconds=REPUBLISH_AFTER_SECONDS))
            .execution_options(synchronize_session=False)
        )
        if getattr(taken, "rowcount", 0):
            due.append((str(delivery_id), int(attempts)))
    return due


def release_stragglers(session: Session, *, now: datetime, due_at: datetime) -> int:
    """Make due the deliveries held for an endpoint that is enabled: created by a
    transaction that saw it disabled and committed after it was re-enabled."""
    enabled = select(WebhookEndpoint.id).where(WebhookEndpoint.enabled.is_(True))
    released = session.execute(
        update(WebhookDelivery)
        .where(
            WebhookDelivery.status == Status.PAUSED,
            WebhookDelivery.created_at >= now - STRAGGLER_AGE,
            WebhookDelivery.endpoint_id.in_(enabled),
        )
        .values(status=Status.PENDING, next_attempt_at=due_at)
        .execution_options(synchronize_session=False)
    )
    return int(getattr(released, "rowcount", 0) or 0)


def dispatch_due(*, now: datetime | None = None) -> int:
    """Publish every due delivery; returns how many."""
    with session_scope() as session:
        due = due_deliveries(session, now=now)
    for delivery_id, attempts in due:
        service.publish_delivery(delivery_id, attempts)
    if due:
        log.info("webhooks.dispatched", count=len(due))
    return len(due)
