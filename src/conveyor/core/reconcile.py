"""The reconciler: the ledger is the source of truth, and this heals what Celery lost.

Run by Beat (one run at a time, whatever the number of schedulers). Each run:
1. tells outcomes still pending in the outbox (outcomes.dispatch_pending);
2. hands out again, at once, messages held unacknowledged by a worker that stopped beating
   (heartbeat.py), instead of after the visibility timeout;
3. finds active jobs unchanged for the grace period that no live worker holds and no queue
   contains, and settles each: from the result the worker stored (it ran, but the ledger
   write failed), else by publishing it again (attempts and effect records keep its effects
   exactly-once), else as a dead letter with the reason.
With a broker other than Redis, only 1 and the stored-result part of 3 run: the broker
cannot be searched, and RabbitMQ requeues a dead consumer's messages itself.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, cast

import redis
from celery import Celery
from sqlalchemy import select, update

from conveyor.core import brokers, heartbeat, ledger, outcomes, workloads
from conveyor.core.celery_app import get_celery
from conveyor.core.db import session_scope
from conveyor.core.jobs import HEADER_OWNER, HEADER_RECORDED
from conveyor.core.locks import Lock
from conveyor.core.models import Job, JobState, utcnow
from conveyor.core.settings import Settings, get_settings
from conveyor.core.task import ConveyorTask

log = logging.getLogger(__name__)
LOCK_NAME = "reconcile"
# Lost jobs settled per run: a backlog is worked off over several runs, each short.
BATCH = 500


class LostMessage(Exception):
    """Why a job became a dead letter without its task raising anything."""


def _message_id(raw: bytes | str) -> str | None:
    try:
        body = json.loads(raw)
    except ValueError:
        return None
    # An unacked entry is [message, exchange, routing_key]; a queue entry is the message.
    message = body[0] if isinstance(body, list) and body else body
    headers = message.get("headers") if isinstance(message, dict) else None
    job_id = headers.get("id") if isinstance(headers, dict) else None
    return str(job_id) if job_id else None


@dataclass
class BrokerView:
    """Job ids the Redis broker holds: waiting in a queue, or delivered and unacknowledged."""

    ids: set[str] = field(default_factory=set)
    # Queues too long to search: their jobs count as present.
    unsearched: set[str] = field(default_factory=set)


class RedisBroker:
    """Kombu's Redis transport, read and repaired with its own keys and lock."""

    def __init__(self, app: Celery) -> None:
        self.app = app

    @contextmanager
    def _channel(self) -> Iterator[tuple[Any, redis.Redis]]:
        with self.app.connection_for_write() as connection:
            channel: Any = connection.default_channel  # kombu's Redis channel, untyped
            with channel.conn_or_acquire() as client:
                yield channel, client

    def restore_orphans(self, held: set[str], delivered_before: float) -> int:
        """Hand out again every message delivered before `delivered_before` that no live
        worker holds. Returns how many."""
        restored = 0
        with self._channel() as (channel, client):
            qos = channel.qos
            # Kombu's own sweep takes this lock too: a message is never restored twice.
            lock = client.lock(qos.unacked_mutex_key, timeout=qos.unacked_mutex_expire)
            if not lock.acquire(blocking=False):
                return 0
            try:
                tags = client.zrange(qos.unacked_index_key, 0, delivered_before, byscore=True)
                for tag in cast(list[bytes], tags):
                    raw = client.hget(qos.unacked_key, tag)
                    if raw is None or _message_id(raw) in held:
                        continue
                    qos.restore_by_tag(tag, client)
                    restored += 1
            finally:
                # Expired meanwhile: harmless, each restore is atomic on its own.
                with suppress(redis.exceptions.LockError):
                    lock.release()
        return restored

    def view(self, queues: list[str], scan_limit: int) -> BrokerView:
        found = BrokerView()
        with self._channel() as (channel, client):
            for _, raw in client.hscan_iter(channel.qos.unacked_key, count=500):
                job_id = _message_id(raw)
                if job_id:
                    found.ids.add(job_id)
            for queue in queues:
                for priority in channel.priority_steps:
                    key = channel._q_for_pri(queue, priority)
                    if client.llen(key) > scan_limit:
                        found.unsearched.add(queue)
                        continue
                    for raw in client.lrange(key, 0, -1):
                        job_id = _message_id(raw)
                        if job_id:
                            found.ids.add(job_id)
        return found


def reconcile(app: Celery | None = None, settings: Settings | None = None) -> dict[str, int]:
    """One run; returns what it did, by kind."""
    app = app or get_celery()
    settings = settings or get_settings()
    done: Counter[str] = Counter()
    done["told"] = outcomes.dispatch_pending()
    held = {
        str(job_id)
        for worker in heartbeat.live_workers().values()
        for job_id in worker.get("held", [])
    }
    broker = RedisBroker(app) if brokers.is_redis(settings.broker) else None
    view: BrokerView | None = None
    if broker is not None:
        cutoff = utcnow().timestamp() - settings.worker_lost_after_seconds
        done["restored"] = broker.restore_orphans(held, cutoff)
        view = broker.view(workloads.queues(settings), settings.reconcile_scan_limit)
    for job in _stale_jobs(settings.reconcile_grace_seconds):
        if job.id in held:
            continue
        if view is not None and (job.id in view.ids or job.queue in view.unsearched):
            continue
        done[_settle(app, job, searched=view is not None)] += 1
    done.pop("left", None)
    report = {kind: count for kind, count in done.items() if count}
    if report:
        log.info("reconcile: %s", report)
    return report


def run_once(app: Celery | None = None) -> dict[str, int] | None:
    """A run, unless another scheduler's run is still going (None then)."""
    settings = get_settings()
    lock = Lock(LOCK_NAME, ttl=max(60.0, settings.reconcile_interval_seconds * 4))
    if not lock.acquire():
        return None
    try:
        return reconcile(app, settings)
    finally:
        lock.release()


def _stale_jobs(grace_seconds: float) -> list[Job]:
    with session_scope() as session:
        return list(
            session.scalars(
                select(Job)
                .where(
                    Job.state.in_(ledger.ACTIVE_STATES),
                    Job.updated_at < utcnow() - timedelta(seconds=grace_seconds),
                )
                .order_by(Job.updated_at)
                .limit(BATCH)
            )
        )


def _settle(app: Celery, job: Job, *, searched: bool) -> str:
    """Settle one lost job; returns what was done."""
    stored = app.AsyncResult(job.id)
    if stored.state == "SUCCESS":
        with session_scope() as session:
            finished = ledger.mark_succeeded(session, job.id, stored.result)
        if finished is not None:
            outcomes.emit({"id": job.id, "owner": job.owner})
        return "settled"
    if not searched:
        return "left"  # the broker may still hold it: nothing to conclude
    if job.state == JobState.QUEUED and job.payload is None:
        # Recorded to be published later by someone else: a workflow's next step, a
        # scheduled send. Not ours to publish.
        return "left"
    task = app.tasks.get(job.name)
    if not isinstance(task, ConveyorTask):
        return "left"  # a workflow's parent (its steps decide), or a task not loaded here
    if job.payload is not None and job.attempts < task.max_retry_count() + 1:
        _publish_again(app, job)
        return "republished"
    reason = (
        f"its message was lost after {job.attempts} attempt(s): no live worker holds it, "
        "no queue contains it and no result was stored"
    )
    payload = job.payload or {"args": job.args, "kwargs": job.kwargs}
    task._dead_letter(
        job.id, LostMessage(reason), None, payload["args"], payload["kwargs"], reason="lost"
    )
    return "dead_lettered"


def _publish_again(app: Celery, job: Job) -> None:
    # The ledger first: the row shows why it runs again, and is fresh for the grace period.
    with session_scope() as session:
        session.execute(
            update(Job)
            .where(Job.id == job.id, Job.state.in_(ledger.ACTIVE_STATES))
            .values(
                state=JobState.QUEUED,
                progress_message="published again: its message was lost",
                updated_at=utcnow(),
            )
        )
    headers = {HEADER_RECORDED: "1"}
    if job.owner:
        headers[HEADER_OWNER] = job.owner
    assert job.payload is not None
    app.send_task(
        job.name,
        args=job.payload.get("args") or [],
        kwargs=job.payload.get("kwargs") or {},
        task_id=job.id,
        queue=job.queue,
        headers=headers,
    )
    log.warning("job %s of %s was lost; published again", job.id, job.name)
