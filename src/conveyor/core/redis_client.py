"""One Redis client per process, for hot state (progress events, cancel flags, locks)."""

from __future__ import annotations

import os
import threading
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import redis
from redis.sentinel import Sentinel, SentinelManagedConnection

from conveyor.core.settings import Settings, get_settings

_lock = threading.Lock()
_clients: dict[tuple[int, str], redis.Redis] = {}


def get_redis(settings: Settings | None = None) -> redis.Redis:
    if _fail_fast and outage_remaining():
        raise redis.ConnectionError(
            f"Redis did not answer moments ago; not trying again for {outage_remaining():.0f}s"
        )
    settings = settings or get_settings()
    key = (os.getpid(), settings.redis)
    client = _clients.get(key)
    if client is None:
        with _lock:
            client = _clients.get(key)
            if client is None:
                client = connect(
                    settings.redis,
                    settings,
                    connection_class=_OutageNoting,
                    decode_responses=True,
                    # Short: a frozen Redis must fail a request in seconds, not hang it.
                    socket_timeout=settings.redis_timeout_seconds,
                    socket_connect_timeout=settings.redis_timeout_seconds,
                    health_check_interval=30,
                )
                _clients[key] = client
    return client


def connect(url: str, settings: Settings, **options: Any) -> redis.Redis:
    """A client for a redis:// or rediss:// URL, or for the master that the Sentinels of a
    sentinel:// URL name (`sentinel://h1:26379;sentinel://h2:26379/0`, as kombu writes it)."""
    if not url.startswith("sentinel://"):
        return redis.Redis.from_url(url, **options)
    nodes, db, password = sentinel_nodes(url)
    timeout = options.get("socket_connect_timeout", settings.redis_timeout_seconds)
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        nodes, socket_timeout=timeout, socket_connect_timeout=timeout, password=password
    )
    if options.pop("connection_class", None) is not None:
        # The master's address comes from the Sentinels, through their own connection class.
        options["connection_class"] = _SentinelOutageNoting
    master: redis.Redis = sentinel.master_for(  # type: ignore[no-untyped-call]
        str(settings.redis_sentinel_master), db=db, password=password, **options
    )
    return master


def sentinel_nodes(url: str) -> tuple[list[tuple[str, int]], int, str | None]:
    """The Sentinels' addresses, the database and the password of a sentinel:// URL."""
    nodes = []
    db = 0
    password = None
    for part in url.split(";"):
        parsed = urlsplit(part.strip())
        nodes.append((parsed.hostname or "127.0.0.1", parsed.port or 26379))
        password = parsed.password or password
        if parsed.path.strip("/"):
            db = int(parsed.path.strip("/"))
    return nodes, db, password


def job_channel(job_id: str) -> str:
    return f"conveyor:job-events:{job_id}"


def cancel_key(job_id: str) -> str:
    return f"conveyor:cancelled:{job_id}"


# Each worker's heartbeat: its pid, queues and the ids of the jobs it holds (heartbeat.py).
WORKER_KEY_PREFIX = "conveyor:worker:"


def worker_key(hostname: str) -> str:
    return f"{WORKER_KEY_PREFIX}{hostname}"


# Hostname → last heartbeat body, without expiry: workers that went silent or stopped too.
WORKERS_SEEN_KEY = "conveyor:workers:seen"


# A dashboard sign-in, by the SHA-256 of its cookie (dashboard/sessions.py).
DASHBOARD_SESSION_PREFIX = "conveyor:dashboard:session:"


# A process that just saw Redis time out fails fast for a moment instead of waiting out
# another timeout per call: requests get their 503 at once while Redis is away.
OUTAGE_HOLD_SECONDS = 5.0
_outage_until = 0.0
_fail_fast = False


def fail_fast_during_outages() -> None:
    """In a process that answers requests: after a timeout, Redis calls fail at once for a
    moment (callers fall back or answer 503) instead of each waiting out its own timeout."""
    global _fail_fast
    _fail_fast = True


# Typed as the connection the mixin is combined with; at run time a plain mixin.
if TYPE_CHECKING:
    _ConnectionBase = redis.Connection
else:
    _ConnectionBase = object


class _NotesOutages(_ConnectionBase):
    """Notes when Redis stops answering: a connect that fails, or a reply that times out. A
    connection the server closed is not an outage (the next one works)."""

    def connect(self) -> None:
        try:
            super().connect()  # type: ignore[no-untyped-call,unused-ignore]
        except (redis.ConnectionError, redis.TimeoutError):
            note_outage()
            raise

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().read_response(*args, **kwargs)
        except redis.TimeoutError:
            note_outage()
            raise


def note_outage(hold: float = OUTAGE_HOLD_SECONDS) -> None:
    global _outage_until
    _outage_until = time.monotonic() + hold


def outage_remaining() -> float:
    """Seconds this process still treats Redis as away (0: try it)."""
    return max(0.0, _outage_until - time.monotonic())


class _OutageNoting(_NotesOutages, redis.Connection):
    pass


class _SentinelOutageNoting(_NotesOutages, SentinelManagedConnection):
    pass
