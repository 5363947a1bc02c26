"""huey's no-op for bench/others.py: RedisHuey, default configuration.

bench/others.py runs its worker as (with -m, from its own virtualenv):

    huey_consumer _others_huey.huey -k process -w 2
"""

from __future__ import annotations

from huey import RedisHuey

from _others_common import REDIS_URL, count_done, mark_ready

huey = RedisHuey("bench", url=REDIS_URL)  # queue: the list "huey.redis.bench"


@huey.task()
def noop() -> None:
    count_done()


@huey.on_startup()
def _ready() -> None:
    # Runs in each worker process right before its first dequeue.
    mark_ready()


def enqueue(count: int) -> None:
    for _ in range(count):
        noop()
