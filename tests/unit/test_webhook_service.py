"""Endpoints, events and the delivery state machine on a throwaway SQLite ledger.

Nothing is committed, so nothing is published: the outbox is inspected instead.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from conveyor.core.celery_app import celery_config, queue_for
from conveyor.core.models import WebhookDelivery, WebhookEndpoint, utcnow
from conveyor.core.settings import Settings
from conveyor.core.workloads import CORE_TASK_MODULES
from conveyor.webhooks import delivery, events, service
from conveyor.webhooks.delivery import AttemptResult, claim, due_deliveries, record

WINDOW = 3600.0
FAST = Settings(webhook_retry_schedule="5,7200", webhook_disable_after_seconds=WINDOW)
T0 = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)  # a fixed clock for the failure window
PUBLIC_URL = "https://93.184.216.34/hooks"  # an IP literal: nothing resolves, nothing connects


def endpoint(session: Session, owner: str, *names: str, enabled: bool = True) -> WebhookEndpoint:
    created = service.create_endpoint(session, owner, PUBLIC_URL, names or ["job.succeeded"])
    created.enabled = enabled
    session.flush()
    return created


def outbox(session: Session) -> list[tuple[str, int]]:
    return list(session.info.get("conveyor_webhook_outbox", []))


def deliveries_of(session: Session, target: WebhookEndpoint) -> list[WebhookDelivery]:
    query = select(WebhookDelivery).where(WebhookDelivery.endpoint_id == target.id)
    return list(session.scalars(query))


def attempt(
    session: Session,
    delivery_id: str,
    expected: int,
    result: AttemptResult,
    at: datetime | None = None,
) -> Any:
    claimed = claim(session, delivery_id, expected, now=at or utcnow(), lease=70)
    assert claimed is not None
    assert claimed.attempt == expected + 1
    return record(session, claimed, result, settings=FAST, now=at)


def status_of(session: Session, delivery_id: str) -> tuple[str, int]:
    row = session.get(WebhookDelivery, delivery_id)
    assert row is not None
    session.refresh(row)
    return row.status, row.attempts


def emit(session: Session, n: int, at: datetime | None = None) -> str:
    """One job.succeeded event for acme; `at` pins its creation time (release order)."""
    (delivery_id,) = service.emit_event(session, "acme", "job.succeeded", {"n": n})
    if at is not None:
        row = session.get(WebhookDelivery, delivery_id)
        assert row is not None
        row.created_at = at
        session.flush()
    return delivery_id


FAILED = AttemptResult(500, 3.0, excerpt="boom", error="HTTP 500")
OK = AttemptResult(200, 2.0, excerpt="ok")


def test_registration_validates_url_and_events(session: Session) -> None:
    with pytest.raises(service.EndpointError, match=r"unknown event type\(s\) nope\.never"):
        service.create_endpoint(session, "acme", PUBLIC_URL, ["job.succeeded", "nope.never"])
    with pytest.raises(service.EndpointError, match="at least one"):
        service.create_endpoint(session, "acme", PUBLIC_URL, [])
    for url in ("http://10.0.0.1/", "http://169.254.169.254/latest/meta-data", "ftp://x.test/"):
        with pytest.raises(service.EndpointError, match="refused"):
            service.create_endpoint(session, "acme", url, ["job.succeeded"])
    created = service.create_endpoint(
        session, "acme", PUBLIC_URL, ["job.dead", "job.dead", "job.succeeded"]
    )
    assert created.events == ["job.dead", "job.succeeded"]
    assert created.secret.startswith("whsec_")
    assert "secret" not in service.endpoint_to_dict(created)
    assert service.endpoint_to_dict(created, with_secret=True)["secret"] == created.secret


def test_workloads_register_event_types(session: Session) -> None:
    events.register_event_type("invoice.paid", "An invoice was paid.")
    assert events.event_types()["invoice.paid"] == "An invoice was paid."
    endpoint(session, "acme", "invoice.paid")
    with pytest.raises(ValueError, match="dotted lower case"):
        events.register_event_type("InvoicePaid")


def test_events_go_to_the_owners_subscribed_endpoints(session: Session) -> None:
    mine = endpoint(session, "acme", "job.succeeded", "job.dead")
    endpoint(session, "acme", "job.dead")
    disabled = endpoint(session, "acme", "job.succeeded", enabled=False)
    endpoint(session, "globex", "job.succeeded")
    ids = service.emit_event(session, "acme", "job.succeeded", {"id": "j1", "at": utcnow()})
    assert len(ids) == 2
    (held,) = deliveries_of(session, disabled)  # recorded, held until it is re-enabled
    assert (held.status, held.next_attempt_at) == ("paused", None)
    ids.remove(held.id)
    sent = session.get(WebhookDelivery, ids[0])
    assert sent is not None
    assert sent.endpoint_id == mine.id
    assert sent.id.startswith("msg_")
    assert sent.payload["type"] == "job.succeeded"
    assert sent.payload["timestamp"].endswith("Z")
    assert sent.payload["data"]["id"] == "j1"
    assert isinstance(sent.payload["data"]["at"], str)  # stored as it will be sent
    assert outbox(session) == [(ids[0], 0)]  # published once it commits; the held one not
    with pytest.raises(ValueError, match="unknown webhook event type"):
        service.emit_event(session, "acme", "made.up", {})


def test_an_attempt_number_is_claimed_once(session: Session) -> None:
    target = endpoint(session, "acme")
    (delivery_id,) = service.emit_event(session, "acme", "job.succeeded", {})
    first = claim(session, delivery_id, 0, now=utcnow(), lease=70)
    assert first is not None
    assert first.attempt == 1
    assert first.url == target.url
    assert claim(session, delivery_id, 0, now=utcnow(), lease=70) is None  # a duplicate message


def test_retries_follow_the_schedule_then_give_up(session: Session) -> None:
    endpoint(session, "acme")
    (delivery_id,) = service.emit_event(session, "acme", "job.succeeded", {})
    # 5 s fits under half the visibility timeout: published with a countdown.
    assert attempt(session, delivery_id, 0, FAILED) == 5
    # 7200 s does not: left to the dispatcher.
    assert attempt(session, delivery_id, 1, FAILED) is None
    row = session.get(WebhookDelivery, delivery_id)
    assert row is not None
    session.refresh(row)
    assert row.status == "pending"
    assert row.attempts == 2
    now = utcnow()
    assert due_deliveries(session, now=now) == []
    later = now + timedelta(seconds=7200 + delivery.DISPATCH_GRACE_SECONDS + 1)
    assert due_deliveries(session, now=later) == [(delivery_id, 2)]
    assert due_deliveries(session, now=later) == []  # not again until republish time
    assert attempt(session, delivery_id, 2, FAILED) is None
    session.refresh(row)
    assert row.status == "failed"
    assert row.next_attempt_at is None
    log = service.list_deliveries(session, row.endpoint_id)[0][1]
    assert [(a.attempt, a.status_code, a.response_excerpt) for a in log] == [
        (1, 500, "boom"),
        (2, 500, "boom"),
        (3, 500, "boom"),
    ]


def test_success_resets_the_failure_count(session: Session) -> None:
    target = endpoint(session, "acme")
    (delivery_id,) = service.emit_event(session, "acme", "job.succeeded", {})
    attempt(session, delivery_id, 0, FAILED)
    session.refresh(target)
    assert target.consecutive_failures == 1
    assert attempt(session, delivery_id, 1, OK) is None
    session.refresh(target)
    assert target.consecutive_failures == 0
    row = session.get(WebhookDelivery, delivery_id)
    assert row is not None
    session.refresh(row)
    assert (row.status, row.last_status_code, row.delivered_at is not None) == (
        "succeeded",
        200,
        True,
    )


def test_the_window_rule() -> None:
    assert delivery.window_elapsed(None, T0, FAST) is False  # no failure streak
    assert delivery.window_elapsed(T0, T0 + timedelta(seconds=WINDOW - 1), FAST) is False
    assert delivery.window_elapsed(T0, T0 + timedelta(seconds=WINDOW), FAST) is True
    naive = T0.replace(tzinfo=None)  # as SQLite hands it back
    assert delivery.window_elapsed(naive, T0 + timedelta(seconds=WINDOW), FAST) is True
    assert Settings().webhook_disable_after_seconds == 5 * 86_400


def test_many_failures_inside_the_window_never_disable(session: Session) -> None:
    # The outage of the bug report: a burst of events, all failing, for a short while.
    target = endpoint(session, "acme")
    for n in range(120):
        attempt(session, emit(session, n), 0, FAILED, at=T0 + timedelta(seconds=n * 0.1))
    late = T0 + timedelta(seconds=WINDOW - 1)
    attempt(session, emit(session, 999), 0, FAILED, at=late)
    session.refresh(target)
    assert target.enabled is True
    assert target.consecutive_failures == 121
    assert service.endpoint_to_dict(target)["failing_since"] == T0.isoformat()


def test_a_success_ends_the_streak_and_the_window_starts_again(session: Session) -> None:
    target = endpoint(session, "acme")
    attempt(session, emit(session, 1), 0, FAILED, at=T0)
    ok_at = T0 + timedelta(seconds=WINDOW - 10)
    assert attempt(session, emit(session, 2), 0, OK, at=ok_at) is None
    session.refresh(target)
    assert (target.consecutive_failures, target.failing_since) == (0, None)
    restart = T0 + timedelta(seconds=WINDOW - 5)
    attempt(session, emit(session, 3), 0, FAILED, at=restart)
    # Past T0's window, but not the new streak's: still enabled.
    attempt(session, emit(session, 4), 0, FAILED, at=T0 + timedelta(seconds=WINDOW + 60))
    session.refresh(target)
    assert target.enabled is True
    assert delivery.window_elapsed(target.failing_since, restart, FAST) is False
    attempt(session, emit(session, 5), 0, FAILED, at=restart + timedelta(seconds=WINDOW))
    session.refresh(target)
    assert target.enabled is False


def test_a_window_of_failure_disables_the_endpoint_and_holds_its_events(
    session: Session,
) -> None:
    failing = endpoint(session, "acme", "job.succeeded")
    watcher = endpoint(session, "acme", "endpoint.disabled")
    first = emit(session, 1, at=T0)
    second = emit(session, 2, at=T0 + timedelta(seconds=1))
    attempt(session, first, 0, FAILED, at=T0)
    attempt(session, second, 0, FAILED, at=T0 + timedelta(seconds=5))
    assert attempt(session, first, 1, FAILED, at=T0 + timedelta(seconds=WINDOW)) is None
    session.refresh(failing)
    assert failing.enabled is False
    assert failing.disabled_reason is not None
    assert "every delivery failed for 60 minutes (3 attempts since" in failing.disabled_reason
    assert failing.disabled_reason.endswith("last: HTTP 500")
    # Both held, the one that tipped the window included: nothing is failed or dropped.
    assert status_of(session, first) == ("paused", 2)
    assert status_of(session, second) == ("paused", 1)
    (notice,) = deliveries_of(session, watcher)
    assert notice.event_type == "endpoint.disabled"
    assert notice.payload["data"]["endpoint_id"] == failing.id
    assert notice.payload["data"]["failing_since"] == T0.isoformat()

    # While disabled: new events are recorded, held, and not published.
    before = outbox(session)
    third = emit(session, 3, at=T0 + timedelta(seconds=WINDOW + 1))
    assert status_of(session, third) == ("paused", 0)
    assert outbox(session) == before
    # A message already on its way for it (published before the endpoint was disabled).
    assert claim(session, second, 1, now=utcnow(), lease=70) is None
    assert status_of(session, second) == ("paused", 1)

    # Re-enabled: the streak is reset and the held deliveries go out, oldest first.
    service.update_endpoint(session, failing, enabled=True)
    assert (failing.enabled, failing.consecutive_failures, failing.disabled_reason) == (
        True,
        0,
        None,
    )
    assert failing.failing_since is None
    assert outbox(session)[len(before) :] == [(first, 2), (second, 1), (third, 0)]
    assert {status_of(session, d)[0] for d in (first, second, third)} == {"pending"}
    # Each continues its own retries: the next attempt number is claimed as usual.
    assert attempt(session, first, 2, OK) is None
    assert status_of(session, first) == ("succeeded", 3)


def test_an_attempt_that_lands_while_the_endpoint_is_disabled_is_not_sent_again(
    session: Session,
) -> None:
    target = endpoint(session, "acme")
    in_flight = emit(session, 1)
    claimed = claim(session, in_flight, 0, now=utcnow(), lease=70)
    assert claimed is not None
    service.update_endpoint(session, target, enabled=False)  # meanwhile
    assert status_of(session, in_flight) == ("paused", 1)
    record(session, claimed, OK, settings=FAST)
    assert status_of(session, in_flight) == ("succeeded", 1)
    service.update_endpoint(session, target, enabled=True)
    assert (in_flight, 1) not in outbox(session)


def test_disabling_through_the_api_holds_too(session: Session) -> None:
    target = endpoint(session, "acme")
    pending = emit(session, 1)
    service.update_endpoint(session, target, enabled=False)
    assert target.disabled_reason == "disabled through the API"
    assert status_of(session, pending) == ("paused", 0)
    assert status_of(session, emit(session, 2)) == ("paused", 0)


def test_the_dispatcher_releases_a_delivery_held_as_its_endpoint_was_re_enabled(
    session: Session,
) -> None:
    target = endpoint(session, "acme")
    service.update_endpoint(session, target, enabled=False)
    straggler = emit(session, 1)  # its transaction saw the endpoint disabled ...
    target.enabled = True  # ... and committed after the release had run
    session.flush()
    now = utcnow()
    assert due_deliveries(session, now=now) == [(straggler, 0)]
    assert status_of(session, straggler) == ("pending", 0)


def test_retry_schedule_setting() -> None:
    assert Settings(webhook_retry_schedule="1, 1,2").webhook_retry_delays == (1.0, 1.0, 2.0)
    assert Settings(webhook_retry_schedule="").webhook_retry_delays == ()
    assert len(Settings().webhook_retry_delays) == 7
    assert sum(Settings().webhook_retry_delays) > 86_400
    with pytest.raises(ValidationError, match="comma-separated"):
        Settings(webhook_retry_schedule="5m,1h")


def test_workers_load_the_tasks_and_beat_runs_the_dispatcher() -> None:
    assert "conveyor.webhooks.tasks" in CORE_TASK_MODULES
    assert queue_for("conveyor.webhooks.deliver") == "webhooks"
    entry = celery_config(Settings(redis_url="redis://127.0.0.1:6379/0"))["beat_schedule"][
        "webhooks-dispatch-due"
    ]
    assert entry["task"] == "conveyor.webhooks.dispatch_due"
    assert entry["schedule"] == timedelta(seconds=30)
