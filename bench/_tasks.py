"""The no-op tasks the throughput benchmark's workers load.

`BENCH_SCENARIO` picks the Celery app this module builds; `BENCH_REDIS_URL` is the Redis
database the benchmark owns. Every no-op, in every scenario, does exactly one thing: INCR a
counter in that database, so the benchmark sees completions the same way for all of them.
A `worker_ready` handler stores the time the worker became ready, the start of the clock.

Scenarios and the queue each one's worker consumes:
  bare-default       plain Celery, default configuration          queue "celery"
  bare-tuned         plain Celery, tuned for short tasks          queue "celery"
  conveyor           Conveyor's production app (conveyor.worker)  queue "default"
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import redis
from celery import Celery, signals

SCENARIO = os.environ.get("BENCH_SCENARIO", "bare-default")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/12")

DONE_KEY = "bench:done"
READY_KEY = "bench:ready"

BARE_TASK = "bench.noop"
UNTRACKED_TASK = "bench.noop_untracked"
TRACKED_TASK = "bench.noop_tracked"

_client: redis.Redis | None = None
_client_pid = 0


def bench_redis() -> redis.Redis:
    """One connection per process: a forked pool child must not share its parent's socket."""
    global _client, _client_pid
    if _client is None or _client_pid != os.getpid():
        _client = redis.Redis.from_url(REDIS_URL, socket_timeout=10)
        _client_pid = os.getpid()
    return _client


def count_done() -> None:
    bench_redis().incr(DONE_KEY)


@signals.worker_ready.connect(weak=False)
def _mark_ready(**_: Any) -> None:
    bench_redis().set(READY_KEY, repr(time.time()))


def _bare_app(tuned: bool) -> Celery:
    app = Celery("bench", broker=REDIS_URL, backend=REDIS_URL)
    # JSON is Celery 5's default already; spelled out so the scenario is unambiguous.
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
    )
    if tuned:
        app.conf.update(
            # The no-op returns nothing anyone reads: skip the SETEX + PUBLISH per task
            # that the result backend would otherwise do.
            task_ignore_result=True,
            # Ack after the run, as Conveyor does, so "tuned" means the same delivery
            # guarantee and the comparison measures overhead, not a weaker promise.
            task_acks_late=True,
            # Short tasks: let each pool process have many messages reserved, so the
            # consumer is not one broker round-trip behind every task (default 4).
            worker_prefetch_multiplier=64,
            # No task events (no PUBLISH to celeryev per task-received/started/succeeded)
            # and no task-sent event at publish time.
            worker_send_task_events=False,
            task_send_sent_event=False,
            # No rate limits are used: skip the token-bucket bookkeeping per message.
            worker_disable_rate_limits=True,
            # Keep pool processes for the whole run (the default; Conveyor recycles them).
            worker_max_tasks_per_child=None,
        )
    return app


if SCENARIO in ("bare-default", "bare-tuned"):
    app = _bare_app(tuned=SCENARIO == "bare-tuned")

    @app.task(name=BARE_TASK)
    def noop() -> None:
        count_done()

elif SCENARIO == "conveyor":
    from celery import shared_task

    from conveyor.core.task import ConveyorTask
    from conveyor.worker import app  # the production entry point: get_celery()

    @shared_task(base=ConveyorTask, name=UNTRACKED_TASK, track=False)
    def noop_untracked() -> None:
        count_done()

    @shared_task(base=ConveyorTask, name=TRACKED_TASK)
    def noop_tracked() -> None:
        count_done()

else:
    raise SystemExit(f"unknown BENCH_SCENARIO {SCENARIO!r}")

# Diagnostics only (throughput.py --diagnose): settings laid over the scenario's app, as JSON.
_overrides = json.loads(os.environ.get("BENCH_CONF") or "{}")
if _overrides:
    app.conf.update(_overrides)

celery = app
