"""The counter and the clock bench/others.py's huey, dramatiq and taskiq no-ops share.

The same keys as bench/_tasks.py, so throughput.py's drain loop reads them for every
library: each no-op INCRs `bench:done`; the first worker process to start consuming stores
the time in `bench:ready` (the second may start a little later: the clock starts when any
can take a task).
"""

from __future__ import annotations

import os
import time

import redis

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")

DONE_KEY = "bench:done"
READY_KEY = "bench:ready"

_client: redis.Redis | None = None
_client_pid = 0


def bench_redis() -> redis.Redis:
    """One connection per process: a forked worker must not share its parent's socket."""
    global _client, _client_pid
    if _client is None or _client_pid != os.getpid():
        _client = redis.Redis.from_url(REDIS_URL, socket_timeout=10)
        _client_pid = os.getpid()
    return _client


def count_done() -> None:
    bench_redis().incr(DONE_KEY)


def mark_ready() -> None:
    bench_redis().set(READY_KEY, repr(time.time()), nx=True)
