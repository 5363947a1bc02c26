"""Redis locks with an owner token, atomic release, an expiry and renewal while the holder runs.

    lock = Lock("invoice:42", ttl=30)
    if lock.acquire():
        try: ...
        finally: lock.release()

    with Lock("invoice:42", ttl=30, wait=5):   # raises LockNotAcquired after 5 s
        ...                                    # renewed every ttl/3 while the block runs

Only the holder (the token) can release or extend; a release after expiry never deletes a
lock someone else took since. Renewal runs in a daemon thread started by `acquire` in the
process that holds the lock — in a prefork worker that is the pool child, after the fork —
so a holder killed with SIGKILL stops renewing and its lock is free again `ttl` seconds later.

Also here, because locks, unique jobs and rate limits share them: `LuaScript` (EVALSHA with a
fallback to EVAL, so a restarted Redis needs no reload step) and `render_key`, which turns a
task's key setting (a template or a function of the arguments) into a key.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import random
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any

import redis
from redis.exceptions import NoScriptError, RedisError

from conveyor.core.redis_client import get_redis

log = logging.getLogger(__name__)

LOCK_PREFIX = "conveyor:lock:"
# How long `acquire(wait=...)` sleeps between attempts (jittered so waiters do not collide).
POLL_SECONDS = 0.05

# A key setting: a str.format template over the job's arguments, or a function of them.
KeySpec = str | Callable[..., str]


class LockNotAcquired(Exception):
    """The lock was held by someone else for longer than the caller would wait."""


class LuaScript:
    """A Lua script run by SHA1; loaded again on NOSCRIPT (a restarted or different Redis)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()

    def __call__(
        self, client: redis.Redis, keys: Sequence[str], args: Sequence[str | int | float]
    ) -> Any:
        try:
            return client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            return client.eval(self.source, len(keys), *keys, *args)


# SET NX PX, or tell the caller how long the current holder still has (ms).
_ACQUIRE = LuaScript(
    """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return -1 end
return redis.call('PTTL', KEYS[1])
"""
)
# Delete only if the token still matches: a late release never frees someone else's lock.
_RELEASE = LuaScript(
    """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
)
# Extend if still ours; if the key is gone (expired while we stalled, or Redis restarted
# without persistence) take it back unless someone else has it. 1 extended, 2 retaken, 0 lost.
_EXTEND = LuaScript(
    """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
if not holder then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 2 end
return 0
"""
)


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


class Lock:
    """A lock on `LOCK_PREFIX + name`, owned by a random token, expiring after `ttl` seconds."""

    def __init__(
        self,
        name: str,
        ttl: float,
        *,
        client: redis.Redis | None = None,
        token: str | None = None,
        wait: float = 0.0,
        prefix: str = LOCK_PREFIX,
    ) -> None:
        if ttl <= 0:
            raise ValueError(f"lock ttl must be positive, got {ttl}")
        self.name = name
        self.key = prefix + name
        self.ttl = float(ttl)
        self.token = token or secrets.token_hex(16)
        self.wait = wait
        # After a failed acquire: seconds until the current holder's lock expires.
        self.retry_after = 0.0
        # Set when renewal found another holder: the protected section is no longer exclusive.
        self.lost = False
        self._client = client
        self._stop: threading.Event | None = None
        self._renewer: threading.Thread | None = None

    @property
    def client(self) -> redis.Redis:
        return self._client if self._client is not None else get_redis()

    def acquire(self, wait: float | None = None) -> bool:
        """Take the lock, polling up to `wait` seconds (default: the constructor's)."""
        deadline = time.monotonic() + (self.wait if wait is None else wait)
        while True:
            remaining_ms = int(_ACQUIRE(self.client, [self.key], [self.token, _ms(self.ttl)]))
            if remaining_ms == -1:
                self.lost = False
                self.retry_after = 0.0
                return True
            # -1 (no expiry) cannot happen for our keys; -2 means it expired meanwhile.
            self.retry_after = max(remaining_ms, 0) / 1000
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(left, POLL_SECONDS * random.uniform(0.5, 1.5), self.retry_after or 1))

    def release(self) -> bool:
        """Stop renewing and delete the key if this token still holds it."""
        self.stop_renewing()
        return bool(_RELEASE(self.client, [self.key], [self.token]))

    def extend(self, ttl: float | None = None) -> bool:
        """Push the expiry `ttl` seconds (default: the lock's) from now; False if lost."""
        outcome = int(_EXTEND(self.client, [self.key], [self.token, _ms(ttl or self.ttl)]))
        if outcome == 2:
            log.warning("lock %s had expired; taken back by its holder", self.name)
        return outcome != 0

    def holder(self) -> str | None:
        value = self.client.get(self.key)
        return None if value is None else str(value)

    def remaining(self) -> float | None:
        """Seconds until the key expires, whoever holds it; None when nobody does."""
        pttl = int(self.client.pttl(self.key))
        return None if pttl < 0 else pttl / 1000

    # --- renewal ---------------------------------------------------------------------------

    def start_renewing(self, interval: float | None = None, max_hold: float | None = None) -> None:
        """Extend the lock every `interval` seconds (default ttl/3) from a daemon thread.

        `max_hold` bounds the whole holding time: a holder stuck past it stops renewing, so
        the lock frees itself `ttl` later even if the process never dies.
        """
        if self._renewer is not None:
            return
        every = interval or self.ttl / 3
        stop = threading.Event()
        until = None if max_hold is None else time.monotonic() + max_hold
        thread = threading.Thread(
            target=self._renew_loop, args=(stop, every, until), name=f"lock:{self.name}"
        )
        thread.daemon = True
        self._stop, self._renewer = stop, thread
        thread.start()

    def stop_renewing(self) -> None:
        stop, thread = self._stop, self._renewer
        self._stop = self._renewer = None
        if stop is not None:
            stop.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)

    def _renew_loop(self, stop: threading.Event, every: float, until: float | None) -> None:
        while not stop.wait(every):
            if until is not None and time.monotonic() > until:
                log.warning("lock %s held past its maximum; no longer renewed", self.name)
                return
            try:
                if not self.extend():
                    self.lost = True
                    log.warning("lock %s was taken by another holder; renewal stopped", self.name)
                    return
            except RedisError as exc:
                # Keep trying: the key lives `ttl` more, enough for Redis to come back.
                log.warning("renewing lock %s failed: %s", self.name, exc)

    # --- context manager ---------------------------------------------------------------------

    def __enter__(self) -> Lock:
        if not self.acquire():
            raise LockNotAcquired(f"lock {self.name!r} is held by someone else")
        self.start_renewing()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.release()
        except RedisError as error:
            # The key expires by itself; the caller's own exception matters more.
            log.warning("releasing lock %s failed: %s", self.name, error)


# --- keys from job arguments -----------------------------------------------------------------


def args_digest(args: Sequence[Any], kwargs: Mapping[str, Any]) -> str:
    """A stable digest of a job's arguments (key order does not matter)."""
    canonical = json.dumps([list(args), dict(kwargs)], sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def raw_setting(owner: object, attribute: str) -> Any:
    """A class attribute as written, so `key = lambda args, kwargs: ...` is not bound to self."""
    value = inspect.getattr_static(owner, attribute, None)
    if isinstance(value, staticmethod | classmethod):
        return value.__get__(None, type(owner))
    return value


def render_key(
    spec: Any,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    *,
    task: object = None,
    extra: Mapping[str, Any] | None = None,
    what: str = "key",
) -> str:
    """Turn a key setting into a key.

    A str is a `str.format` template over the arguments: "{0}" is the first positional one,
    "{customer_id}" a keyword one; `extra` adds names such as `owner`. A callable is called
    as f(args, kwargs), or f(task, args, kwargs) when it is a method taking self.
    """
    if isinstance(spec, str):
        names = {**(extra or {}), **kwargs}
        try:
            return spec.format(*args, **names)
        except (KeyError, IndexError) as exc:
            raise ValueError(
                f"{what} template {spec!r} names {exc} but the job has no such argument"
            ) from None
    if callable(spec):
        try:
            wants_self = len(inspect.signature(spec).parameters) == 3
        except (TypeError, ValueError):
            wants_self = False
        value = (
            spec(task, tuple(args), dict(kwargs)) if wants_self else spec(tuple(args), dict(kwargs))
        )
        return str(value)
    raise TypeError(f"{what} must be a str template or a function, got {type(spec).__name__}")
