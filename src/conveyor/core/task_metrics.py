"""Per-attempt metrics and log context, from Celery's task signals.

Signals (not the base task) so plain Celery tasks on a Conveyor worker are measured too.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime
from typing import Any

import structlog

from conveyor.core import job_stats, metrics
from conveyor.core.settings import get_settings

log = structlog.get_logger("conveyor.queue")

HEADER_ENQUEUED_AT = "conveyor_enqueued_at"
_STARTED_AT = "conveyor_started_at"
OUTCOMES = {"SUCCESS": "succeeded", "RETRY": "retried", "FAILURE": "dead", "IGNORED": "requeued"}


def _in_worker(task: Any) -> bool:
    # Eager runs (tests, task_always_eager) never waited in a queue: not a queue's figures.
    return not getattr(task.request, "is_eager", False)


def stamp_enqueue_time(headers: dict[str, Any] | None = None, **_: Any) -> None:
    """Every publish (first, retry, requeue) records when it entered the queue."""
    if headers is not None:
        headers[HEADER_ENQUEUED_AT] = time.time()


def _queue_of(task: Any) -> str:
    delivery = getattr(task.request, "delivery_info", None) or {}
    return str(delivery.get("routing_key") or getattr(task, "queue", None) or "default")


def _ready_at(request: Any, enqueued_at: float) -> float:
    """A job with a countdown only becomes ready at its ETA; waiting before that is chosen."""
    eta = getattr(request, "eta", None)
    if not eta:
        return enqueued_at
    try:
        return max(enqueued_at, datetime.fromisoformat(str(eta)).timestamp())
    except ValueError:
        return enqueued_at


def task_started(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    if task is None:
        return
    now = time.time()
    queue = _queue_of(task)
    structlog.contextvars.bind_contextvars(job_id=task_id, task_name=task.name, queue=queue)
    setattr(task.request, _STARTED_AT, time.perf_counter())
    enqueued_at = getattr(task.request, HEADER_ENQUEUED_AT, None)
    if not isinstance(enqueued_at, int | float):
        return
    wait = max(0.0, now - _ready_at(task.request, float(enqueued_at)))
    metrics.queue_wait.labels(queue).observe(wait)
    if _in_worker(task):
        job_stats.observe_wait(queue, wait)
    threshold = get_settings().queue_wait_threshold_seconds
    if threshold and wait > threshold:
        metrics.queue_wait_exceeded.labels(queue).inc()
        log.warning(
            "queue.wait_exceeded",
            event_type="queue.wait_exceeded",
            wait_seconds=round(wait, 3),
            threshold_seconds=threshold,
        )


def task_finished(task: Any = None, state: str | None = None, **_: Any) -> None:
    try:
        if task is None:
            return
        started = getattr(task.request, _STARTED_AT, None)
        queue = _queue_of(task)
        runtime = time.perf_counter() - started if isinstance(started, float) else None
        if runtime is not None:
            metrics.job_runtime.labels(task.name, queue).observe(runtime)
        outcome = OUTCOMES.get(state or "", (state or "unknown").lower())
        if getattr(task.request, "conveyor_cancelled", False):
            outcome = "cancelled"
        metrics.jobs_total.labels(task.name, queue, outcome).inc()
        if _in_worker(task):
            # Requeued and rejected deliveries are not counted; retried and dead are failed too.
            job_stats.observe_outcome(queue, outcome, runtime)
    finally:
        structlog.contextvars.clear_contextvars()


def process_exiting(pid: int | None = None, **_: Any) -> None:
    import os

    metrics.mark_process_dead(pid or os.getpid())


def serve_worker_metrics(**_: Any) -> None:
    """In the worker's main process: this machine's samples on CONVEYOR_WORKER_METRICS_PORT."""
    port = get_settings().worker_metrics_port
    if not port:
        return
    from prometheus_client import start_http_server

    start_http_server(port, registry=metrics.multiprocess_registry())
    logging.getLogger(__name__).info("worker metrics on port %s", port)
