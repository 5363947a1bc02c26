"""dramatiq's no-op for bench/others.py: RedisBroker, default middleware.

bench/others.py runs its worker as (with -m, from its own virtualenv):

    dramatiq _others_dramatiq --processes 2 --threads 1
"""

from __future__ import annotations

from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import Middleware

from _others_common import REDIS_URL, count_done, mark_ready


class _Ready(Middleware):
    def after_worker_boot(self, broker: Any, worker: Any) -> None:
        # The worker's consumer and worker threads have just started.
        mark_ready()


broker = RedisBroker(url=REDIS_URL)  # queue: the list "dramatiq:default"
broker.add_middleware(_Ready())
dramatiq.set_broker(broker)


@dramatiq.actor
def noop() -> None:
    count_done()


def enqueue(count: int) -> None:
    for _ in range(count):
        noop.send()
