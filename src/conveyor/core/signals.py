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


def _take_over_logging(**_: Any) -> None:
    # Connecting to setup_logging stops Celery from installing its own handlers.
    from conveyor.core.logging import configure_logging

    configure_logging()


def install() -> None:
    global _installed
    if _installed:
        return
    from conveyor.core import heartbeat, task_metrics

    signals.worker_process_init.connect(_reset_process_state, weak=False)
    signals.before_task_publish.connect(task_metrics.stamp_enqueue_time, weak=False)
    signals.before_task_publish.connect(_record_published, weak=False)
    signals.task_prerun.connect(task_metrics.task_started, weak=False)
    signals.task_postrun.connect(task_metrics.task_finished, weak=False)
    signals.worker_process_shutdown.connect(task_metrics.process_exiting, weak=False)
    signals.worker_ready.connect(task_metrics.serve_worker_metrics, weak=False)
    signals.worker_ready.connect(heartbeat.start, weak=False)
    signals.worker_shutdown.connect(heartbeat.stop, weak=False)
    signals.setup_logging.connect(_take_over_logging, weak=False)
    _installed = True
