"""Global rate limits on Redis: GCRA in one Lua script, shared by every process that asks.

    decision = acquire("smtp:mailgun", "10/s")
    if not decision.allowed:
        ...  # come back in decision.retry_after seconds

Celery's own `rate_limit` is per worker process; this one holds across any number of workers
and machines, because the state (one "theoretical arrival time" per key) lives in Redis and
is read, checked and written by one atomic script using Redis's clock.

Rates are written "N/s", "N/m", "N/h" or "N/d", optionally with a period count ("100/5m")
and a burst ("10/s burst 20"): at most `burst` calls at once, and `N` per period on average.
The default burst is 1, which spaces calls evenly (one every period/N).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import redis

from conveyor.core.locks import LuaScript
from conveyor.core.redis_client import get_redis

RATE_PREFIX = "conveyor:rate:"

_UNITS = {
    "s": 1.0, "sec": 1.0, "second": 1.0, "seconds": 1.0,
    "m": 60.0, "min": 60.0, "minute": 60.0, "minutes": 60.0,
    "h": 3600.0, "hr": 3600.0, "hour": 3600.0, "hours": 3600.0,
    "d": 86400.0, "day": 86400.0, "days": 86400.0,
}  # fmt: skip
_SPEC = re.compile(
    r"""^\s*(?P<count>\d+)\s*/\s*(?P<every>\d+(?:\.\d+)?)?\s*(?P<unit>[a-z]+)
        (?:\s*[,;]?\s*burst\s*[=:]?\s*(?P<burst>\d+))?\s*$""",
    re.VERBOSE | re.IGNORECASE,
)


@dataclass(frozen=True)
class Rate:
    """`limit` calls per `period` seconds, at most `burst` of them back to back."""

    limit: int
    period: float
    burst: int = 1

    def __post_init__(self) -> None:
        if self.limit < 1:
            raise ValueError(f"a rate needs at least 1 call per period, got {self.limit}")
        if self.period <= 0:
            raise ValueError(f"a rate's period must be positive, got {self.period}")
        if self.burst < 1:
            raise ValueError(f"burst must be at least 1, got {self.burst}")

    @property
    def interval(self) -> float:
        """Seconds between calls at the steady rate (GCRA's emission interval)."""
        return self.period / self.limit

    @property
    def per_second(self) -> float:
        return self.limit / self.period

    def __str__(self) -> str:
        burst = f" burst {self.burst}" if self.burst != 1 else ""
        return f"{self.limit}/{self.period:g}s{burst}"


def parse_rate(spec: str | Rate) -> Rate:
    """'10/s', '600/m', '1000/h', '5/10s', '10/s burst 20' -> Rate."""
    if isinstance(spec, Rate):
        return spec
    return _parse(spec)


@lru_cache(maxsize=256)
def _parse(spec: str) -> Rate:
    match = _SPEC.match(spec)
    unit = _UNITS.get((match["unit"] or "").lower()) if match else None
    if match is None or unit is None:
        raise ValueError(
            f"rate {spec!r} is not of the form 'N/s', 'N/m', 'N/h' or 'N/d' "
            "(optionally 'N/10s' or 'N/s burst B')"
        )
    every = float(match["every"]) if match["every"] else 1.0
    burst = int(match["burst"]) if match["burst"] else 1
    return Rate(limit=int(match["count"]), period=every * unit, burst=burst)


@dataclass(frozen=True)
class Decision:
    """`allowed`: go now. `reserved`: go after `retry_after` without asking again.
    Neither: ask again after `retry_after` seconds; `refused_by` names the limit that said no
    (for `take_all`, which asks several)."""

    allowed: bool
    retry_after: float = 0.0
    remaining: int = 0
    reserved: bool = False
    refused_by: str | None = None


@dataclass(frozen=True)
class Bucket:
    """One limit for `take_all`: `cost` calls against `rate` on `key`; horizon 0 takes a
    slot only when one is free now, a positive horizon books one up to that far ahead."""

    key: str
    rate: str | Rate
    cost: int = 1
    horizon: float = 0.0


# GCRA over one or more buckets, all or nothing. KEYS: the buckets (each value is the
# theoretical arrival time, TAT, in µs). ARGV[1]: "now" in µs, or "" for Redis's own clock
# (the same for all callers; an injected clock is for tests). Then four per bucket: emission
# interval T (µs), burst window T*burst (µs), cost, reservation horizon (µs).
# A bucket allows a call when, after adding its cost, its TAT stays within the burst window
# of now; it can book one when the wait fits in its horizon. If every bucket can, all their
# TATs advance and the caller goes after the longest wait; if one cannot, nothing changes.
# Returns {code, wait µs, remaining, refusing bucket (1-based, 0 if none)}:
# code 1 allowed, 2 reserved, 0 denied (wait: until that bucket could book).
_GCRA = LuaScript(
    """
local now = tonumber(ARGV[1])
if not now then
  local clock = redis.call('TIME')
  now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
end
local new_tats = {}
local longest = 0
local remaining = nil
for i, key in ipairs(KEYS) do
  local base = 2 + (i - 1) * 4
  local interval = tonumber(ARGV[base])
  local window = tonumber(ARGV[base + 1])
  local cost = tonumber(ARGV[base + 2])
  local horizon = tonumber(ARGV[base + 3])
  local tat = tonumber(redis.call('GET', key)) or now
  if tat < now then tat = now end
  local new_tat = tat + interval * cost
  local wait = new_tat - window - now
  if wait > horizon then
    return {0, string.format('%.0f', wait - horizon), 0, i}
  end
  new_tats[i] = new_tat
  if wait > longest then longest = wait end
  local left = math.floor((window - (new_tat - now)) / interval)
  if remaining == nil or left < remaining then remaining = left end
end
for i, key in ipairs(KEYS) do
  redis.call('SET', key, string.format('%.0f', new_tats[i]),
             'PX', math.max(1, math.ceil((new_tats[i] - now) / 1000)))
end
if longest <= 0 then
  return {1, 0, remaining or 0, 0}
end
return {2, string.format('%.0f', longest), 0, 0}
"""
)


def _us(seconds: float) -> int:
    return round(seconds * 1_000_000)


def take_all(
    buckets: Sequence[Bucket], *, client: redis.Redis | None = None, at: float | None = None
) -> Decision:
    """Take from every bucket at once, in one round trip, or from none of them.

    For a call bound by several limits (a provider's, a domain's, a customer's): no slot is
    taken from one limit while another refuses, so a refusal costs the others nothing.
    """
    if not buckets:
        return Decision(allowed=True)
    keys, args = script_call(buckets, at)
    return decision_of(_GCRA(client or get_redis(), keys, args), buckets)


def script_call(
    buckets: Sequence[Bucket], at: float | None = None
) -> tuple[list[str], list[str | int | float]]:
    """The keys and arguments of the GCRA script for `buckets` (see `queue_take`)."""
    args: list[str | int | float] = ["" if at is None else _us(at)]
    for bucket in buckets:
        parsed = parse_rate(bucket.rate)
        if bucket.cost < 1:
            raise ValueError(f"cost must be at least 1, got {bucket.cost}")
        if bucket.horizon < 0:
            raise ValueError(f"horizon must not be negative, got {bucket.horizon}")
        interval = _us(parsed.interval)
        args += [interval, interval * parsed.burst, bucket.cost, _us(bucket.horizon)]
    return [RATE_PREFIX + bucket.key for bucket in buckets], args


def queue_take(pipeline: redis.client.Pipeline, buckets: Sequence[Bucket]) -> None:
    """Queue `take_all(buckets)` on a pipeline, to share its round trip with other commands;
    read its answer with `decision_of`. A Redis that lost the script answers NOSCRIPT there:
    the caller then asks again with `take_all`, which loads it."""
    keys, args = script_call(buckets)
    pipeline.evalsha(_GCRA.sha, len(keys), *keys, *args)


def decision_of(answer: Sequence[int], buckets: Sequence[Bucket]) -> Decision:
    code, wait, remaining, refused = answer
    return Decision(
        allowed=int(code) == 1,
        retry_after=int(wait) / 1_000_000,
        remaining=max(0, int(remaining)),
        reserved=int(code) == 2,
        refused_by=buckets[int(refused) - 1].key if int(refused) else None,
    )


def _decide(
    key: str,
    rate: str | Rate,
    *,
    cost: int,
    horizon: float,
    client: redis.Redis | None,
    at: float | None,
) -> Decision:
    bucket = Bucket(key, rate, cost=cost, horizon=horizon)
    decision = take_all([bucket], client=client, at=at)
    return Decision(decision.allowed, decision.retry_after, decision.remaining, decision.reserved)


def acquire(
    key: str,
    rate: str | Rate,
    *,
    cost: int = 1,
    client: redis.Redis | None = None,
    at: float | None = None,
) -> Decision:
    """One call against the limit on `key`: allowed now, or retry after `retry_after` s.

    A denied call changes nothing, so callers that give up cost the others nothing.
    `at` (seconds since the epoch) replaces Redis's clock; it exists for tests.
    """
    return _decide(key, rate, cost=cost, horizon=0.0, client=client, at=at)


def reserve(
    key: str,
    rate: str | Rate,
    *,
    horizon: float,
    cost: int = 1,
    client: redis.Redis | None = None,
    at: float | None = None,
) -> Decision:
    """Like `acquire`, but a call that would wait at most `horizon` seconds books its slot.

    A reserved decision means: go in `retry_after` seconds, without asking again. Waiters
    then come back exactly once at evenly spaced times instead of all retrying together.
    A booked slot that is never used is simply lost (the limit errs on the safe side).
    """
    if horizon < 0:
        raise ValueError(f"horizon must not be negative, got {horizon}")
    return _decide(key, rate, cost=cost, horizon=horizon, client=client, at=at)


def retry_after_header(seconds: float) -> str:
    """An HTTP Retry-After value: whole seconds, rounded up, at least 1."""
    return str(max(1, math.ceil(seconds)))
