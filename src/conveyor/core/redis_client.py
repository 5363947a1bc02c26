"""One Redis client per process, for hot state (progress events, cancel flags, locks)."""

from __future__ import annotations

import os
import threading

import redis

from conveyor.core.settings import Settings, get_settings

_lock = threading.Lock()
_clients: dict[tuple[int, str], redis.Redis] = {}


def get_redis(settings: Settings | None = None) -> redis.Redis:
    settings = settings or get_settings()
    key = (os.getpid(), settings.redis)
    client = _clients.get(key)
    if client is None:
        with _lock:
            client = _clients.get(key)
            if client is None:
                client = redis.Redis.from_url(
                    settings.redis,
                    decode_responses=True,
                    # Short: a frozen Redis must fail a request in seconds, not hang it.
                    socket_timeout=settings.redis_timeout_seconds,
                    socket_connect_timeout=settings.redis_timeout_seconds,
                    health_check_interval=30,
                )
                _clients[key] = client
    return client


def job_channel(job_id: str) -> str:
    return f"conveyor:job-events:{job_id}"


def cancel_key(job_id: str) -> str:
    return f"conveyor:cancelled:{job_id}"


# Each worker's heartbeat: its pid, queues and the ids of the jobs it holds (heartbeat.py).
WORKER_KEY_PREFIX = "conveyor:worker:"


def worker_key(hostname: str) -> str:
    return f"{WORKER_KEY_PREFIX}{hostname}"
