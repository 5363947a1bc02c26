"""Cleanup prunes what retention says, in batches, and keeps everything else."""

from __future__ import annotations

import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select

from conveyor.core.celery_app import get_celery
from conveyor.core.db import session_scope
from conveyor.core.models import (
    DeadLetter,
    IdempotencyRecord,
    Job,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
)
from tests.integration.conftest import Stack

OLD = datetime.now(UTC) - timedelta(days=90)
NOW = datetime.now(UTC)
TAG = "cleanup-test"


def _job(state: str, finished_at: datetime | None) -> Job:
    return Job(
        id=str(uuid.uuid4()),
        name="conveyor.diagnostics.run",
        queue="default",
        owner=TAG,
        state=state,
        args=[],
        kwargs={},
        created_at=OLD,
        finished_at=finished_at,
    )


def _seed() -> None:
    with session_scope() as session:
        session.add_all([_job("succeeded", OLD) for _ in range(25)])
        session.add_all([_job("succeeded", NOW), _job("queued", None), _job("dead", OLD)])
        for failed_at in (OLD, NOW):
            session.add(
                DeadLetter(
                    id=uuid.uuid4().hex,
                    job_id="x",
                    task_name="t",
                    queue="default",
                    owner=TAG,
                    args=[],
                    kwargs={},
                    error_type="E",
                    error_message="m",
                    reason="permanent_error",
                    attempts=1,
                    failed_at=failed_at,
                )
            )
        for expires_at in (OLD, NOW + timedelta(hours=1)):
            session.add(
                IdempotencyRecord(
                    id=uuid.uuid4().hex,
                    owner=TAG,
                    key=uuid.uuid4().hex,
                    method="POST",
                    path="/x",
                    request_hash="0" * 64,
                    status="done",
                    expires_at=expires_at,
                )
            )
        endpoint = WebhookEndpoint(
            id=uuid.uuid4().hex, owner=TAG, url="https://example.com/hook", events=[], secret="s"
        )
        session.add(endpoint)
        session.flush()
        for status, created_at in (("succeeded", OLD), ("pending", OLD), ("succeeded", NOW)):
            delivery = WebhookDelivery(
                id=uuid.uuid4().hex,
                endpoint_id=endpoint.id,
                event_type="job.succeeded",
                payload={},
                status=status,
                created_at=created_at,
            )
            session.add(delivery)
            session.flush()
            session.add(
                WebhookAttempt(delivery_id=delivery.id, attempt=1, duration_ms=1.0, created_at=OLD)
            )


def _counts() -> dict[str, int]:
    with session_scope() as session:
        return {
            "jobs": session.scalar(select(func.count()).where(Job.owner == TAG)) or 0,
            "letters": session.scalar(select(func.count()).where(DeadLetter.owner == TAG)) or 0,
            "keys": session.scalar(select(func.count()).where(IdempotencyRecord.owner == TAG)) or 0,
            "deliveries": session.scalar(select(func.count()).select_from(WebhookDelivery)) or 0,
            "attempts": session.scalar(select(func.count()).select_from(WebhookAttempt)) or 0,
        }


def test_cleanup_command_prunes_in_batches(stack: Stack) -> None:
    _seed()
    before = _counts()
    result = subprocess.run(
        [sys.executable, "-c", "from conveyor.cli import main; main()", "cleanup",
         "--batch-size", "10"],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    after = _counts()
    assert before["jobs"] - after["jobs"] == 25  # old finished jobs, across three batches
    assert after["jobs"] == 3  # the recent one, the queued one, the dead one (its letter's history)
    assert before["letters"] - after["letters"] == 1
    assert after["keys"] == 1
    assert before["deliveries"] - after["deliveries"] == 1  # pending ones are never pruned
    assert before["attempts"] - after["attempts"] == 1
    assert "jobs" in result.stdout


def test_beat_cleanup_task_runs_on_the_worker(stack: Stack) -> None:
    removed = get_celery().send_task("conveyor.maintenance.cleanup").get(timeout=30)
    assert set(removed) == {
        "jobs",
        "dead_letters",
        "idempotency_keys",
        "webhook_deliveries",
        "schedule_runs",
        "job_stats",
    }
    assert "cleanup" in get_celery().conf.beat_schedule
