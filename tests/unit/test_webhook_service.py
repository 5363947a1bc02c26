"""Endpoints, events and the delivery state machine on a throwaway SQLite ledger.

Nothing is committed, so nothing is published: the outbox is inspected instead.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from conveyor.core.celery_app import TASK_MODULES, celery_config, queue_for
from conveyor.core.models import WebhookDelivery, WebhookEndpoint, utcnow
from conveyor.core.settings import Settings
from conveyor.webhooks import delivery, events, service
from conveyor.webhooks.delivery import AttemptResult, claim, due_deliveries, record

FAST = Settings(webhook_retry_schedule="5,7200", webhook_disable_after_failures=3)
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


def attempt(session: Session, delivery_id: str, expected: int, result: AttemptResult) -> Any:
    claimed = claim(session, delivery_id, expected, now=utcnow(), lease=70)
    assert claimed is not None
    assert claimed.attempt == expected + 1
    return record(session, claimed, result, settings=FAST)


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


def test_events_go_to_the_owners_subscribed_enabled_endpoints(session: Session) -> None:
    mine = endpoint(session, "acme", "job.succeeded", "job.dead")
    endpoint(session, "acme", "job.dead")
    endpoint(session, "acme", "job.succeeded", enabled=False)
    endpoint(session, "globex", "job.succeeded")
    ids = service.emit_event(session, "acme", "job.succeeded", {"id": "j1", "at": utcnow()})
    assert len(ids) == 1
    sent = session.get(WebhookDelivery, ids[0])
    assert sent is not None
    assert sent.endpoint_id == mine.id
    assert sent.id.startswith("msg_")
    assert sent.payload["type"] == "job.succeeded"
    assert sent.payload["timestamp"].endswith("Z")
    assert sent.payload["data"]["id"] == "j1"
    assert isinstance(sent.payload["data"]["at"], str)  # stored as it will be sent
    assert outbox(session) == [(ids[0], 0)]  # published once the transaction commits
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


def test_endpoint_is_disabled_after_consecutive_failures(session: Session) -> None:
    failing = endpoint(session, "acme", "job.succeeded")
    watcher = endpoint(session, "acme", "endpoint.disabled")
    first, second = (
        service.emit_event(session, "acme", "job.succeeded", {"n": n})[0] for n in (1, 2)
    )
    attempt(session, first, 0, FAILED)
    attempt(session, second, 0, FAILED)
    attempt(session, first, 1, FAILED)  # the third consecutive failure
    session.refresh(failing)
    assert failing.enabled is False
    assert failing.disabled_reason is not None
    assert "3 consecutive failed deliveries" in failing.disabled_reason
    statuses = {row.id: row.status for row in deliveries_of(session, failing)}
    assert statuses == {first: "failed", second: "skipped"}
    (notice,) = deliveries_of(session, watcher)
    assert notice.event_type == "endpoint.disabled"
    assert notice.payload["data"]["endpoint_id"] == failing.id
    # A delivery already queued for a disabled endpoint is skipped, not attempted.
    late = service.create_delivery(session, failing, service.build_payload("job.succeeded", {}))
    assert claim(session, late.id, 0, now=utcnow(), lease=70) is None
    session.refresh(late)
    assert (late.status, late.attempts) == ("skipped", 0)
    service.update_endpoint(session, failing, enabled=True)
    assert (failing.enabled, failing.consecutive_failures, failing.disabled_reason) == (
        True,
        0,
        None,
    )


def test_retry_schedule_setting() -> None:
    assert Settings(webhook_retry_schedule="1, 1,2").webhook_retry_delays == (1.0, 1.0, 2.0)
    assert Settings(webhook_retry_schedule="").webhook_retry_delays == ()
    assert len(Settings().webhook_retry_delays) == 7
    assert sum(Settings().webhook_retry_delays) > 86_400
    with pytest.raises(ValidationError, match="comma-separated"):
        Settings(webhook_retry_schedule="5m,1h")


def test_workers_load_the_tasks_and_beat_runs_the_dispatcher() -> None:
    assert "conveyor.webhooks.tasks" in TASK_MODULES
    assert queue_for("conveyor.webhooks.deliver") == "webhooks"
    entry = celery_config(Settings(redis_url="redis://127.0.0.1:6379/0"))["beat_schedule"][
        "webhooks-dispatch-due"
    ]
    assert entry["task"] == "conveyor.webhooks.dispatch_due"
    assert entry["schedule"] == timedelta(seconds=30)
