"""Pruning what the ledger no longer needs, in small batches that never lock a table for long."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, delete, func, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from conveyor.core.models import (
    DeadLetter,
    Job,
    JobState,
    WebhookAttempt,
    WebhookDelivery,
)
from conveyor.core.operations_models import JOB_STATS
from conveyor.core.settings import Settings, get_settings

# Kept until their dead letter goes: a dead job is the dead letter's history.
PRUNABLE_JOB_STATES = (JobState.SUCCEEDED, JobState.CANCELLED, JobState.FAILED)


def delete_in_batches(
    session: Session,
    key: InstrumentedAttribute[Any],
    condition: ColumnElement[bool],
    *,
    batch_size: int,
) -> int:
    """Delete rows matching `condition`, `batch_size` keys per statement, committing each."""
    table = key.class_
    removed = 0
    while True:
        keys = list(session.scalars(select(key).where(condition).limit(batch_size)))
        if not keys:
            return removed
        session.execute(delete(table).where(key.in_(keys)))
        session.commit()
        removed += len(keys)


def _before(days: float) -> datetime:
    return datetime.now(UTC) - timedelta(days=days)


@dataclass(frozen=True)
class Retention:
    jobs_days: float
    dead_letters_days: float
    webhook_deliveries_days: float
    batch_size: int
    # None: CONVEYOR_STATS_RETENTION_DAYS (callers that predate it need not pass it).
    job_stats_days: float | None = None

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> Retention:
        settings = settings or get_settings()
        return cls(
            jobs_days=settings.job_retention_days,
            dead_letters_days=settings.dead_letter_retention_days,
            webhook_deliveries_days=settings.webhook_delivery_retention_days,
            batch_size=settings.cleanup_batch_size,
            job_stats_days=settings.stats_retention_days,
        )


def prune_jobs(session: Session, days: float, batch_size: int) -> int:
    condition = Job.state.in_(PRUNABLE_JOB_STATES) & (Job.finished_at < _before(days))
    return delete_in_batches(session, Job.id, condition, batch_size=batch_size)


def prune_dead_letters(session: Session, days: float, batch_size: int) -> int:
    condition = DeadLetter.failed_at < _before(days)
    return delete_in_batches(session, DeadLetter.id, condition, batch_size=batch_size)


def prune_idempotency_keys(session: Session, batch_size: int) -> int:
    from conveyor.core.idempotency import purge_expired

    return purge_expired(session, batch_size)


def prune_webhook_deliveries(session: Session, days: float, batch_size: int) -> int:
    """Finished deliveries and their attempt logs (attempts first: no cascade needed)."""
    cutoff = _before(days)
    finished = (WebhookDelivery.status != "pending") & (WebhookDelivery.created_at < cutoff)
    old = select(WebhookDelivery.id).where(finished).scalar_subquery()
    delete_in_batches(
        session, WebhookAttempt.id, WebhookAttempt.delivery_id.in_(old), batch_size=batch_size
    )
    return delete_in_batches(session, WebhookDelivery.id, finished, batch_size=batch_size)


def prune_schedule_runs(session: Session, days: float, batch_size: int) -> int:
    """Schedule runs kept as long as finished jobs (an every-second schedule adds 86,400 a day)."""
    from conveyor.core.schedules.models import ScheduleRun

    condition = ScheduleRun.created_at < _before(days)
    return delete_in_batches(session, ScheduleRun.id, condition, batch_size=batch_size)


def prune_job_stats(session: Session, days: float, batch_size: int) -> int:
    """Per-minute job figures, oldest minutes first, about `batch_size` rows per statement
    (the key is (minute, queue): a batch ends at a whole minute)."""
    cutoff = _before(days)
    minute = JOB_STATS.c.minute
    removed = 0
    while True:
        oldest = select(minute).where(minute < cutoff).order_by(minute).limit(batch_size)
        last = session.scalar(select(func.max(oldest.subquery().c.minute)))
        if last is None:
            return removed
        result = session.execute(delete(JOB_STATS).where(minute < cutoff, minute <= last))
        session.commit()
        removed += int(getattr(result, "rowcount", 0) or 0)


def run_cleanup(session: Session, retention: Retention | None = None) -> dict[str, int]:
    retention = retention or Retention.from_settings()
    size = retention.batch_size
    stats_days = retention.job_stats_days
    if stats_days is None:
        stats_days = get_settings().stats_retention_days
    return {
        "jobs": prune_jobs(session, retention.jobs_days, size),
        "dead_letters": prune_dead_letters(session, retention.dead_letters_days, size),
        "idempotency_keys": prune_idempotency_keys(session, size),
        "webhook_deliveries": prune_webhook_deliveries(
            session, retention.webhook_deliveries_days, size
        ),
        "schedule_runs": prune_schedule_runs(session, retention.jobs_days, size),
        "job_stats": prune_job_stats(session, stats_days, size),
    }
