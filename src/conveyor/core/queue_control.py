"""Pausing and resuming queues, and what each queue looks like now (depth, wait, consumers).

A pause is a row in the ledger, so every worker honours it, also one started later
(worker_queues.py); the broadcast sent after the commit only makes it take effect at once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import redis
from celery import Celery
from sqlalchemy import String, literal_column, select
from sqlalchemy.orm import Session

from conveyor.core import brokers, heartbeat, workloads
from conveyor.core.ledger import as_utc
from conveyor.core.models import Job, JobState, utcnow
from conveyor.core.operations_models import PausedQueue
from conveyor.core.settings import Settings, get_settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class QueueInfo:
    """One declared queue, as an operator (the API, the CLI, the dashboard) sees it."""

    name: str
    # Messages waiting in the broker; None when the broker is not Redis and cannot say.
    depth: int | None
    paused: bool
    paused_at: datetime | None
    paused_by: str | None
    # When the oldest job still queued in the ledger was created.
    oldest_waiting_at: datetime | None
    # Hostnames of live workers consuming the queue, by their heartbeats.
    consumers: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: times in ISO 8601 UTC."""
        return {
            "name": self.name,
            "depth": self.depth,
            "paused": self.paused,
            "paused_at": _iso(self.paused_at),
            "paused_by": self.paused_by,
            "oldest_waiting_at": _iso(self.oldest_waiting_at),
            "consumers": list(self.consumers),
        }


def _iso(value: datetime | None) -> str | None:
    stamp = as_utc(value)
    return stamp.isoformat() if stamp else None


def require_declared(queue: str, settings: Settings | None = None) -> None:
    known = workloads.queues(settings or get_settings())
    if queue not in known:
        raise workloads.UnknownQueue(
            f"queue {queue!r} is not declared: add it to CONVEYOR_QUEUES "
            f"(declared: {', '.join(known)})"
        )


def paused_queues(session: Session) -> dict[str, PausedQueue]:
    return {row.queue: row for row in session.scalars(select(PausedQueue))}


def pause(
    session: Session, queue: str, by: str | None = None, settings: Settings | None = None
) -> bool:
    """Store the pause (the caller commits, then calls announce). True if it was not paused."""
    require_declared(queue, settings)
    if session.get(PausedQueue, queue) is not None:
        return False
    session.add(PausedQueue(queue=queue, paused_at=utcnow(), paused_by=by))
    session.flush()
    return True


def resume(session: Session, queue: str, settings: Settings | None = None) -> bool:
    """Remove the pause (the caller commits, then calls announce). True if it was paused."""
    require_declared(queue, settings)
    row = session.get(PausedQueue, queue)
    if row is None:
        return False
    session.delete(row)
    session.flush()
    return True


def announce(
    queue: str,
    *,
    paused: bool,
    app: Celery | None = None,
    client: redis.Redis | None = None,
) -> bool:
    """Tell the workers now, without waiting for replies; False if the broker was not reached
    (each worker then catches up at its next heartbeat)."""
    from conveyor.core.celery_app import get_celery

    app = app or get_celery()
    try:
        if paused:
            app.control.cancel_consumer(queue, reply=False)
            return True
        # Only to workers assigned the queue: one that never consumed it must not start to.
        assigned = [
            hostname
            for hostname, body in heartbeat.live_workers(client).items()
            if queue in body.get("queues", [])
        ]
        if assigned:  # an empty destination would mean every worker
            app.control.add_consumer(queue, destination=assigned, reply=False)
        return True
    except Exception as exc:  # kombu and redis errors alike: the ledger already holds it
        log.warning("workers not told at once that %s was %s: %s", queue, _verb(paused), exc)
        return False


def _verb(paused: bool) -> str:
    return "paused" if paused else "resumed"


def queue_overview(
    session: Session, redis_client: redis.Redis, settings: Settings | None = None
) -> list[QueueInfo]:
    """Every declared queue, in declaration order."""
    settings = settings or get_settings()
    names = workloads.queues(settings)
    paused = paused_queues(session)
    depths = _depths(names, redis_client, settings)
    consumers: dict[str, list[str]] = {name: [] for name in names}
    for hostname, body in sorted(heartbeat.live_workers(redis_client).items()):
        for queue in body.get("consuming", body.get("queues", [])):
            if queue in consumers:
                consumers[queue].append(hostname)
    overview = []
    for name in names:
        row = paused.get(name)
        overview.append(
            QueueInfo(
                name=name,
                depth=None if depths is None else depths[name],
                paused=row is not None,
                paused_at=as_utc(row.paused_at) if row else None,
                paused_by=row.paused_by if row else None,
                oldest_waiting_at=_oldest_waiting(session, name),
                consumers=consumers[name],
            )
        )
    return overview


def queue_info(
    session: Session, redis_client: redis.Redis, queue: str, settings: Settings | None = None
) -> QueueInfo:
    require_declared(queue, settings)
    return next(q for q in queue_overview(session, redis_client, settings) if q.name == queue)


def _oldest_waiting(session: Session, queue: str) -> datetime | None:
    # One seek in the partial index ix_conveyor_jobs_queued, however many jobs there are.
    # The state inline, not a parameter: only then may a prepared plan use a partial index.
    queued = literal_column(f"'{JobState.QUEUED.value}'", String)
    oldest = session.scalar(
        select(Job.created_at)
        .where(Job.state == queued, Job.queue == queue)
        .order_by(Job.created_at)
        .limit(1)
    )
    return as_utc(oldest)


def _depths(
    names: list[str], redis_client: redis.Redis, settings: Settings
) -> dict[str, int] | None:
    try:
        return brokers.queue_depths(names, settings, redis_client=redis_client)
    except Exception as exc:  # redis, kombu and socket errors alike: the rest still shows
        log.warning("queue depths unavailable: %s", exc)
        return None
