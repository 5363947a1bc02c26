"""taskiq's no-op for bench/others.py: taskiq-redis ListQueueBroker, default configuration.

bench/others.py runs its worker as (with -m, from its own virtualenv):

    taskiq worker _others_taskiq:broker --workers 2

The no-op is async, as taskiq's tasks usually are (a sync one would run in a thread pool),
so its one INCR goes through redis.asyncio.
"""

from __future__ import annotations

import asyncio
import time

import redis.asyncio
from taskiq import TaskiqEvents, TaskiqState
from taskiq_redis import ListQueueBroker

from _others_common import DONE_KEY, READY_KEY, REDIS_URL

broker = ListQueueBroker(url=REDIS_URL)  # queue: the list "taskiq"

_client: redis.asyncio.Redis | None = None


@broker.on_event(TaskiqEvents.WORKER_STARTUP)
async def _ready(_state: TaskiqState) -> None:
    # Runs in each worker process before it starts listening.
    global _client
    _client = redis.asyncio.Redis.from_url(REDIS_URL, socket_timeout=10)
    await _client.set(READY_KEY, repr(time.time()), nx=True)


@broker.task
async def noop() -> None:
    assert _client is not None  # set at worker startup
    await _client.incr(DONE_KEY)


async def _enqueue(count: int) -> None:
    await broker.startup()
    try:
        for _ in range(count):
            await noop.kiq()
    finally:
        await broker.shutdown()


def enqueue(count: int) -> None:
    asyncio.run(_enqueue(count))
