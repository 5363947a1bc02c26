"""Worker heartbeats: each worker's main process says every few seconds, in Redis, that it
is alive, which jobs it holds (running, or received and waiting for their time), which
queues it consumes and how loaded it is. Each beat also applies queue pauses to the worker
(worker_queues.py), and leaves a lasting record, so a dashboard can list silent workers too.

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
from pathlib import Path
from typing import Any

import redis
from celery import Celery
from kombu.exceptions import KombuError
from sqlalchemy.exc import SQLAlchemyError

from conveyor.core import worker_queues
from conveyor.core.redis_client import WORKER_KEY_PREFIX, WORKERS_SEEN_KEY, get_redis, worker_key
from conveyor.core.settings import get_settings

log = logging.getLogger(__name__)
_beat: Heartbeat | None = None
# A worker last heard of longer ago than this is dropped from the record of workers seen.
FORGET_AFTER_SECONDS = 24 * 3600


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
    def __init__(
        self,
        hostname: str,
        queues: list[str],
        interval: float,
        *,
        app: Celery | None = None,
        concurrency: int | None = None,
        started_at: float | None = None,
    ) -> None:
        super().__init__(name="conveyor-heartbeat", daemon=True)
        self.hostname = hostname
        self.queues = queues  # assigned (-Q, else every queue), paused ones included
        self.interval = interval
        self.app = app
        self.concurrency = concurrency
        self.started_at = started_at or time.time()
        self.last_body: dict[str, Any] | None = None
        self.stopping = threading.Event()

    def consuming(self) -> list[str]:
        """Assigned queues not paused, after asking the worker's loop to match them."""
        if self.app is None:
            return list(self.queues)
        try:
            return worker_queues.reconcile(self.app, self.hostname)
        except (SQLAlchemyError, KombuError, OSError) as exc:
            log.warning("paused queues not applied to %s this beat: %s", self.hostname, exc)
            return worker_queues.consuming_now(self.app)

    def body(self) -> dict[str, Any]:
        from celery.worker import state

        body: dict[str, Any] = {
            "hostname": self.hostname,
            "pid": os.getpid(),
            "queues": self.queues,
            "consuming": self.consuming(),
            "concurrency": self.concurrency,
            "started_at": self.started_at,
            "active": len(state.active_requests),
            "at": time.time(),
            "held": held_job_ids(),
        }
        rss = resident_bytes(os.getpid())
        if rss is not None:
            body["rss_bytes"] = rss
        return body

    def beat(self) -> None:
        body = self.body()
        encoded = json.dumps(body)
        with get_redis().pipeline(transaction=False) as pipe:
            # Expires by itself: a worker that dies without a word stops counting as alive.
            pipe.set(worker_key(self.hostname), encoded, ex=lost_after())
            pipe.hset(WORKERS_SEEN_KEY, self.hostname, encoded)
            pipe.execute()
        self.last_body = body

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
            client = get_redis()
            client.delete(worker_key(self.hostname))
            if self.last_body is not None:
                stopped = {**self.last_body, "stopped_at": time.time()}
                client.hset(WORKERS_SEEN_KEY, self.hostname, json.dumps(stopped))


def resident_bytes(pid: int) -> int | None:
    """Resident memory of a process and its children (the pool), from /proc; None elsewhere."""
    total = 0
    found = False
    for each in [pid, *_children(pid)]:
        try:
            status = Path(f"/proc/{each}/status").read_text()
        except OSError:  # not Linux, or the child just exited
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024  # reported in kB
                found = True
                break
    return total if found else None


def _children(pid: int) -> list[int]:
    found: list[int] = []
    # Per thread: billiard may fork replacement children from a thread of its own.
    for path in Path(f"/proc/{pid}/task").glob("*/children"):
        with suppress(OSError, ValueError):
            found.extend(int(child) for child in path.read_text().split())
    return found


def lost_after() -> int:
    """Seconds of silence after which a worker counts as gone."""
    return max(1, round(get_settings().worker_lost_after_seconds))


def start(sender: Any = None, **_: Any) -> None:
    """worker_ready: in the worker's main process, where Celery tracks the requests."""
    global _beat
    hostname = str(getattr(sender, "hostname", None) or "unknown")
    queues = worker_queues.assigned()
    # Pauses are applied only where the start-up selection was seen (worker_init).
    app = getattr(sender, "app", None) if queues else None
    if not queues:
        consumer_queues = getattr(getattr(sender, "task_consumer", None), "queues", None) or []
        queues = [queue.name for queue in consumer_queues]
    controller = getattr(sender, "controller", None)
    started = getattr(controller, "startup_time", None)
    _beat = Heartbeat(
        hostname,
        queues,
        get_settings().worker_heartbeat_seconds,
        app=app,
        concurrency=getattr(controller, "concurrency", None),
        started_at=started.timestamp() if started is not None else None,
    )
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


def known_workers(client: redis.Redis | None = None) -> list[dict[str, Any]]:
    """Every worker heard of in the last day, by hostname, each with a `status`: `online`,
    `silent` (no beat for longer than lost_after()) or `stopped` (shut down cleanly)."""
    client = client or get_redis()
    now = time.time()
    found: list[dict[str, Any]] = []
    forgotten: list[Any] = []
    for hostname, raw in client.hgetall(WORKERS_SEEN_KEY).items():
        try:
            body = json.loads(raw)
            last = float(body.get("stopped_at") or body["at"])
        except (ValueError, TypeError, KeyError):
            forgotten.append(hostname)
            continue
        if now - last > FORGET_AFTER_SECONDS:
            forgotten.append(hostname)
            continue
        if body.get("stopped_at"):
            body["status"] = "stopped"
        elif now - float(body["at"]) > lost_after():
            body["status"] = "silent"
        else:
            body["status"] = "online"
        found.append(body)
    if forgotten:
        client.hdel(WORKERS_SEEN_KEY, *forgotten)
    return sorted(found, key=lambda body: str(body.get("hostname")))
