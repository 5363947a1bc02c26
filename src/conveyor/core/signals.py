"""Celery signal handlers: per-process resources and ledger rows for jobs sent by plain Celery."""

from __future__ import annotations

import logging
from typing import Any

from celery import signals

from conveyor.core import db, ledger

log = logging.getLogger(__name__)
_installed = False


def _reset_process_state(**_: Any) -> None:
    # A forked child must build its own pools; the parent's sockets are not its to use.
    db.reset_after_fork()


def _record_published(
    sender: str | None = None,
    headers: dict[str, Any] | None = None,
    body: Any = None,
    routing_key: str | None = None,
    **_: Any,
) -> None:
    """Jobs sent with `.delay()` rather than `submit()` still appear in the ledger."""
    from conveyor.core.celery_app import get_celery
    from conveyor.core.jobs import HEADER_RECORDED

    headers = headers or {}
    if headers.get(HEADER_RECORDED) or headers.get("retries"):
        return
    task = get_celery().tasks.get(sender or "")
    if task is None or not getattr(task, "track", False):
        return
    args, kwargs = ([], {})
    if isinstance(body, list | tuple) and len(body) >= 2:
        args, kwargs = list(body[0]), dict(body[1])
    with db.session_scope() as session:
        ledger.ensure_job(
            session,
            ledger.NewJob(
                id=headers["id"],
                name=str(sender),
                queue=routing_key or "default",
                args=args,
                kwargs=kwargs,
                republishable=True,
            ),
        )


class UnregisteredTask(Exception):
    """A message named a task that no module loaded by the worker defines."""


def _dead_letter_unregistered(name: str | None = None, id: str | None = None, **_: Any) -> None:
    """Celery drops a message for a task it does not know, which would leave its job queued
    for ever: make it a dead letter that says what to fix, to replay once it is fixed."""
    from conveyor.core import dead_letters
    from conveyor.core.events import publish_job

    if not id:
        return
    exc = UnregisteredTask(
        f"no task named {name!r} in this worker: add the module that defines it to "
        "CONVEYOR_TASK_MODULES (or correct the name), restart the workers, then replay"
    )
    with db.session_scope() as session:
        job = ledger.mark_failed(session, id, exc, None)
        if job is None:
            return  # not a job the ledger tracks, or already finished
        dead_letters.record(
            session,
            dead_letters.Failure(
                job_id=id,
                task_name=str(name),
                queue=job.queue,
                owner=job.owner,
                args=list(job.args or []),
                kwargs=dict(job.kwargs or {}),
                exc=exc,
                traceback=None,
                reason="unregistered",
                attempts=job.attempts,
            ),
        )
        snapshot = ledger.job_to_dict(job)
    publish_job(snapshot)
    log.error("job %s is now a dead letter: %s", id, exc)


def _take_over_logging(**_: Any) -> None:
    # Connecting to setup_logging stops Celery from installing its own handlers.
    from conveyor.core.logging import configure_logging

    configure_logging()


def install() -> None:
    global _installed
    if _installed:
        return
    from conveyor.core import (
        brokers,
        heartbeat,
        job_stats,
        redaction,
        task_metrics,
        worker_queues,
    )

    signals.worker_process_init.connect(_reset_process_state, weak=False)
    signals.before_task_publish.connect(task_metrics.stamp_enqueue_time, weak=False)
    signals.before_task_publish.connect(_record_published, weak=False)
    signals.before_task_publish.connect(redaction.mask_shown_arguments, weak=False)
    signals.task_prerun.connect(task_metrics.task_started, weak=False)
    signals.task_postrun.connect(task_metrics.task_finished, weak=False)
    signals.worker_process_shutdown.connect(task_metrics.process_exiting, weak=False)
    # Pool children write their last figures as they exit; solo and threads pools record in
    # the main process, which writes them at worker shutdown.
    signals.worker_process_shutdown.connect(job_stats.flush_at_exit, weak=False)
    signals.worker_shutdown.connect(job_stats.flush_at_exit, weak=False)
    signals.worker_ready.connect(task_metrics.serve_worker_metrics, weak=False)
    # After -Q is applied, before the consumer starts: paused queues are left out.
    signals.worker_init.connect(worker_queues.leave_out_paused, weak=False)
    signals.worker_init.connect(brokers.declare_every_queue, weak=False)
    signals.worker_ready.connect(heartbeat.start, weak=False)
    signals.worker_shutdown.connect(heartbeat.stop, weak=False)
    signals.setup_logging.connect(_take_over_logging, weak=False)
    signals.task_unknown.connect(_dead_letter_unregistered, weak=False)
    _installed = True
