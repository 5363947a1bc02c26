"""Worker heartbeats: each worker's main process says every few seconds, in Redis, that it
is alive and which jobs it holds (running, or received and waiting for their time).

The reconciler reads them: a job no live worker holds, and that is nowhere in the broker,
was lost; a message held unacknowledged by a worker that stopped beating is handed out again
at once instead of after the visibility timeout.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from contextlib import suppress
from typing import Any

import redis

from conveyor.core.redis_client import WORKER_KEY_PREFIX, get_redis, worker_key
from conveyor.core.settings import get_settings

log = logging.getLogger(__name__)
_beat: Heartbeat | None = None


def held_job_ids() -> list[str]:
    """Ids of the requests this worker process holds: active and reserved (ETA included)."""
    from celery.worker import state

    for _ in range(5):
        try:
            held = {request.id for request in state.active_requests}
            held.update(request.id for request in state.reserved_requests)
            return sorted(held)
        except RuntimeError:  # the consumer changed a set while it was being read
            time.sleep(0.01)
    return []


class Heartbeat(threading.Thread):
    def __init__(self, hostname: str, queues: list[str], interval: float) -> None:
        super().__init__(name="conveyor-heartbeat", daemon=True)
        self.hostname = hostname
        self.queues = queues
        self.interval = interval
        self.stopping = threading.Event()

    def beat(self) -> None:
        body = {
            "hostname": self.hostname,
            "pid": os.getpid(),
            "queues": self.queues,
            "at": time.time(),
            "held": held_job_ids(),
        }
        # Expires by itself: a worker that dies without a word stops counting as alive.
        get_redis().set(worker_key(self.hostname), json.dumps(body), ex=lost_after())

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                self.beat()
            except redis.RedisError as exc:
                log.warning("heartbeat of %s not written: %s", self.hostname, exc)
            self.stopping.wait(self.interval)

    def stop(self) -> None:
        self.stopping.set()
        with suppress(redis.RedisError):  # it expires by itself anyway
            get_redis().delete(worker_key(self.hostname))


def lost_after() -> int:
    """Seconds of silence after which a worker counts as gone."""
    return max(1, round(get_settings().worker_lost_after_seconds))


def start(sender: Any = None, **_: Any) -> None:
    """worker_ready: in the worker's main process, where Celery tracks the requests."""
    global _beat
    hostname = str(getattr(sender, "hostname", None) or "unknown")
    consumer_queues = getattr(getattr(sender, "task_consumer", None), "queues", None) or []
    queues = [queue.name for queue in consumer_queues]
    _beat = Heartbeat(hostname, queues, get_settings().worker_heartbeat_seconds)
    _beat.start()


def stop(**_: Any) -> None:
    """worker_shutdown: say at once that this worker is gone."""
    if _beat is not None:
        _beat.stop()


def live_workers(client: redis.Redis | None = None) -> dict[str, dict[str, Any]]:
    """Every worker whose heartbeat has not expired, by hostname."""
    client = client or get_redis()
    keys = list(client.scan_iter(match=f"{WORKER_KEY_PREFIX}*", count=500))
    found: dict[str, dict[str, Any]] = {}
    for raw in client.mget(keys) if keys else []:
        if raw:
            body = json.loads(raw)
            found[str(body["hostname"])] = body
    return found
