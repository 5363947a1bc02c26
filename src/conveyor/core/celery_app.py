"""The Celery application factory, with a production configuration."""

from __future__ import annotations

import os
import sys
import threading
from datetime import timedelta
from typing import Any

from celery import Celery
from celery._state import _set_task_join_will_block  # type: ignore[attr-defined]

from conveyor.core import brokers, kombu_redis, workloads
from conveyor.core.settings import Settings, SettingsError, get_settings

# Before any broker connection: kombu's Redis transport keeping one client per channel.
kombu_redis.install()

_lock = threading.Lock()
_modules_imported = False


def queue_for(task_name: str, app: Celery | None = None) -> str:
    """The task's own `queue`, else the first CONVEYOR_QUEUES or workload pattern matching its
    name, else `default`."""
    # An app passed in is finalized for the lookup (submit reads the task's own queue); the
    # process app is only read once configured, so routing never needs a broker setting.
    registry: Any = app.tasks if app is not None else (_app.tasks if _app.finalized else {})
    task = registry.get(task_name)
    return getattr(task, "queue", None) or workloads.queue_for_name(task_name, get_settings())


def route_task(
    name: str, args: Any, kwargs: Any, options: dict[str, Any], task: Any = None, **_: Any
) -> dict[str, str]:
    # An explicit queue (apply_async(queue=...) or the task's own) wins over the name.
    queue = options.get("queue") or getattr(task, "queue", None) or queue_for(name)
    queue = getattr(queue, "name", queue)  # Celery may hand over a kombu Queue
    # Before kombu's QueueNotFound: one line naming the setting to change.
    workloads.require_queue(queue, name, get_settings())
    return {"queue": queue}


def celery_config(settings: Settings) -> dict[str, Any]:
    return {
        "broker_url": settings.broker,
        "result_backend": settings.result_backend,
        # JSON only: pickle would let anyone who can write to the broker run code in workers.
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        # One result backend for all of a process's threads (its Redis client is thread-safe):
        # otherwise each new thread of the API's pool builds its own, with its own connections.
        "result_backend_thread_safe": True,
        # Acknowledge after the task finishes, so a worker that dies mid-task loses nothing...
        "task_acks_late": True,
        # ...including when the child process is killed (OOM, SIGKILL): requeue, not fail.
        "task_reject_on_worker_lost": True,
        # A failure or a hard time limit is final: the dead-letter store keeps it, so ack.
        "task_acks_on_failure_or_timeout": True,
        # Long tasks: reserve one message per process, so no job sits behind a busy one.
        "worker_prefetch_multiplier": settings.worker_prefetch_multiplier,
        # Every task gets limits; the soft one raises inside the task so it can clean up.
        "task_soft_time_limit": settings.task_soft_time_limit,
        "task_time_limit": settings.task_time_limit,
        "broker_transport_options": {
            **brokers.transport_options(settings),
            **_sentinel_options(settings.broker, settings),
        },
        "result_backend_transport_options": _sentinel_options(settings.result_backend, settings),
        # The result backend too (Celery's default waits two minutes on a frozen Redis).
        "redis_socket_timeout": max(5.0, settings.redis_timeout_seconds),
        "redis_socket_connect_timeout": settings.redis_timeout_seconds,
        # Results in Redis are short-lived; the ledger keeps the durable record.
        "result_expires": timedelta(seconds=settings.result_expires),
        # Keep trying to reach the broker at start-up (it may still be booting).
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,
        # Let running jobs finish when the broker connection drops. Cancelling them marks them
        # revoked when the result backend is the same, unreachable Redis, and acknowledges
        # them: lost. Finished, their unacknowledged messages come back and are skipped, as
        # the ledger says they are done (core/reconcile.py hands them back early).
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        # Recycle children to bound slow leaks in task code and libraries.
        "worker_max_tasks_per_child": settings.worker_max_tasks_per_child,
        "worker_max_memory_per_child": settings.worker_max_memory_per_child_kib,
        "worker_concurrency": settings.worker_concurrency,
        "task_queues": brokers.declared_queues(workloads.queues(settings), settings),
        "task_default_queue": "default",
        "task_default_routing_key": "default",
        "task_create_missing_queues": False,
        "task_routes": (route_task,),
        # Events feed Flower and `celery events`. Flower enables them in running workers on
        # its own; CONVEYOR_TASK_EVENTS=true turns them on from the start, sent events too.
        "worker_send_task_events": settings.task_events,
        "task_send_sent_event": settings.task_events,
        "timezone": "UTC",
        "enable_utc": True,
        # Beat keeps its schedule state with the rest of the local data.
        "beat_schedule_filename": str(settings.data_dir / "celerybeat-schedule"),
        "beat_schedule": {
            "cleanup": {
                "task": "conveyor.maintenance.cleanup",
                "schedule": timedelta(hours=1),
            },
            # The ledger heals what the broker lost (core/reconcile.py); one run at a time.
            "reconcile": workloads.periodic(
                "conveyor.maintenance.reconcile", settings.reconcile_interval_seconds
            ),
            "webhooks-dispatch-due": workloads.periodic(
                "conveyor.webhooks.dispatch_due", settings.webhook_dispatch_interval_seconds
            ),
            # Each workload's own housekeeping.
            **workloads.beat_schedule(settings),
        },
        # Logging is configured by Conveyor, not replaced by Celery.
        "worker_hijack_root_logger": False,
    }


def _sentinel_options(url: str, settings: Settings) -> dict[str, Any]:
    if not url.startswith("sentinel://"):
        return {}
    # kombu and Celery ask the Sentinels for this master, and follow it when it fails over.
    return {"master_name": settings.redis_sentinel_master}


def create_celery_app(settings: Settings | None = None) -> Celery:
    """A Celery app configured now, from `settings`, made the current app."""
    settings = settings or get_settings()
    app = Celery("conveyor", include=workloads.task_modules(settings), set_as_current=True)
    app.conf.update(celery_config(settings))
    from conveyor.core import signals

    signals.install()
    return app


class SettingsConfiguredCelery(Celery):
    """A Celery app that reads Conveyor's settings when its configuration is first needed.

    Settings are read before anything is changed, so when they cannot be (nothing configured
    yet, a bad value) the error reaches the caller and the next use tries again, instead of
    leaving an app configured without a broker.
    """

    # Set in API processes (use_request_timeouts): requests get short broker timeouts.
    answers_requests = False

    def send_task(self, name: str, *args: Any, **options: Any) -> Any:
        # An explicit queue (or a task's own) is resolved by Celery before any router runs:
        # check it here, so an undeclared one is Conveyor's one-line error naming the setting.
        queue = options.get("queue")
        if queue:
            workloads.require_queue(getattr(queue, "name", queue), name, get_settings())
        countdown = options.get("countdown")
        if (countdown or options.get("eta")) and brokers.is_amqp(get_settings().broker_url or ""):
            brokers.prepare_delays(self)
            if countdown and 0 < countdown < 1:
                # RabbitMQ holds delays in whole seconds, and refuses one that rounds to 0.
                options["countdown"] = 1
        return super().send_task(name, *args, **options)

    def finalize(self, auto: bool = False) -> None:
        try:
            super().finalize(auto=auto)
        except SettingsError:
            # Binding the tasks reads the configuration; without settings yet (pytest collecting
            # a task proxy, say), finish on the next use instead of staying half-registered.
            self.finalized = False
            raise

    def _load_config(self) -> Any:
        settings = get_settings()
        config = {**celery_config(settings), "include": workloads.task_modules(settings)}
        conf = super()._load_config()  # type: ignore[misc]
        conf.add_defaults(config)  # below anything set on the app explicitly
        if self.answers_requests:
            _apply_request_timeouts(self, settings)
        return conf


def _create_current_app() -> SettingsConfiguredCelery:
    # Made current at import, configured on first use: importing a task module (which imports
    # this one) is enough for `.delay()` to reach Conveyor's broker, not Celery's default app,
    # and settings are read only once something is sent.
    app = SettingsConfiguredCelery("conveyor", set_as_current=True)
    # "Current" is per thread; other threads (a FastAPI sync route runs in a pool) fall back
    # to the default app, which would otherwise be Celery's own, pointed at amqp://localhost.
    app.set_default()
    from conveyor.core import signals

    signals.install()
    return app


_app = _create_current_app()


def get_celery() -> Celery:
    """The process-wide Celery app, with every Conveyor task registered."""
    global _modules_imported
    if not _modules_imported:
        with _lock:
            if not _modules_imported:
                _import_task_modules()
                _modules_imported = True
    return _app


def _import_task_modules() -> None:
    # Task modules import from the working directory, as they do for `celery -A` workers.
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.append(cwd)
    try:
        _app.loader.import_default_modules()
    except ImportError as exc:
        raise SettingsError(
            f"CONVEYOR_TASK_MODULES: importing the task modules from {cwd} failed: {exc}; run "
            "from the folder that holds them, or add that folder to PYTHONPATH"
        ) from None


def use_request_timeouts() -> None:
    """In a process that answers requests: a publish to a broker that does not answer fails
    within about CONVEYOR_REDIS_TIMEOUT_SECONDS (the API answers 503), instead of retrying
    for the whole outage. Applied when the app is configured (settings are not read here)."""
    _app.answers_requests = True
    if getattr(_app, "configured", False):
        _apply_request_timeouts(_app, get_settings())


def _apply_request_timeouts(app: Celery, settings: Settings) -> None:
    timeout = settings.redis_timeout_seconds
    app.conf.broker_transport_options = {
        **app.conf.broker_transport_options,
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
    }
    app.conf.broker_connection_timeout = timeout
    # Workers wait for the broker for ever; a request must not (0 would mean for ever too).
    app.conf.broker_connection_max_retries = 1
    app.conf.redis_socket_timeout = timeout
    app.conf.redis_socket_connect_timeout = timeout
    # Requests never wait for a result, so the result backend need not subscribe to every job
    # sent (a round trip each, and a minute of retries, then a dead consumer, when Redis
    # hangs). Celery skips that where joining a result would block, as in its workers.
    _set_task_join_will_block(True)
    app.conf.task_publish_retry_policy = {
        "max_retries": 0,
        "interval_start": 0,
        "interval_step": 0.2,
        "interval_max": 0.2,
    }
