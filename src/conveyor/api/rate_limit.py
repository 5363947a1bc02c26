"""Requests per minute per API key (CONVEYOR_API_RATE_LIMIT_PER_MINUTE; 0 turns it off).

The limit is GCRA on Redis (conveyor.core.rate_limit), so it holds across every API process:
a key may send its whole minute's worth at once, then one request per 60/N seconds. Over
the limit: 429 with `Retry-After` (whole seconds) and `{"detail": ...}`. Every answer under
the limit carries `X-RateLimit-Limit` and `X-RateLimit-Remaining`.

`get_caller` (api/deps.py) applies it to every authenticated route; health and metrics
routes take no key and are never limited. `api_rate_limit` is the same check as a
dependency of its own, for routes that authenticate some other way.

Failed authentications are limited per client address as well
(CONVEYOR_API_AUTH_FAILURES_PER_MINUTE): past the limit, an address gets 429 before its key
is even looked at, so guessing keys goes no faster than the limit, and a right guess made
while blocked is not confirmed. Clients behind one proxy share its address unless uvicorn
trusts the proxy's X-Forwarded-For (--forwarded-allow-ips).
"""

from __future__ import annotations

import logging

from fastapi import HTTPException, Request, Response, status
from redis.exceptions import RedisError

from conveyor.core.rate_limit import (
    RATE_PREFIX,
    Bucket,
    Decision,
    Rate,
    acquire,
    decision_of,
    queue_take,
    retry_after_header,
)
from conveyor.core.redis_client import get_redis
from conveyor.core.settings import SettingsError, get_settings

log = logging.getLogger(__name__)

KEY_PREFIX = "api:key:"
# The failures of one client address (a GCRA bucket), and the marker that blocks it.
AUTH_FAILURE_PREFIX = "api:auth-failures:"
AUTH_BLOCK_PREFIX = RATE_PREFIX + "api:auth-blocked:"


def limit_api_key(key_id: str, response: Response | None = None) -> None:
    """Count one request against the key's limit; raise 429 when it is over."""
    per_minute = get_settings().api_rate_limit_per_minute
    if per_minute <= 0:
        return
    try:
        decision = acquire(KEY_PREFIX + key_id, Rate(per_minute, 60.0, burst=per_minute))
    except RedisError as exc:
        # Fail open: a Redis blip must not turn every request away; the limit is protection.
        log.warning("API rate limit not checked (Redis unavailable): %s", exc)
        return
    _answer(decision, per_minute, response)


def _answer(decision: Decision, per_minute: int, response: Response | None) -> None:
    if not decision.allowed:
        wait = retry_after_header(decision.retry_after)
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            f"rate limit of {per_minute} requests per minute for this API key exceeded; "
            f"retry in {wait} s",
            headers={"Retry-After": wait, "X-RateLimit-Limit": str(per_minute)},
        )
    if response is not None:
        response.headers["X-RateLimit-Limit"] = str(per_minute)
        response.headers["X-RateLimit-Remaining"] = str(decision.remaining)


def admit_known_key(address: str, key_id: str, response: Response | None = None) -> None:
    """`check_auth_block(address)`, then `limit_api_key(key_id)`, in one Redis round trip.

    Only for a key this process has checked already (api/deps.py's cache): then nothing
    about the key is looked up before the block is known, and a blocked address gets the
    same 429 whatever key it sends (the request it costs the key's limit is harmless)."""
    settings = get_settings()
    per_minute = settings.api_rate_limit_per_minute
    if per_minute <= 0 or settings.api_auth_failures_per_minute <= 0:
        check_auth_block(address)
        limit_api_key(key_id, response)
        return
    bucket = Bucket(KEY_PREFIX + key_id, Rate(per_minute, 60.0, burst=per_minute))
    try:
        pipeline = get_redis().pipeline(transaction=False)
        pipeline.pttl(AUTH_BLOCK_PREFIX + address)
        queue_take(pipeline, [bucket])
        left_ms, answer = pipeline.execute(raise_on_error=False)
    except (RedisError, SettingsError) as exc:
        log.warning("API limits not checked (Redis unavailable): %s", exc)
        return
    if isinstance(left_ms, int) and left_ms > 0:
        per_address = settings.api_auth_failures_per_minute
        raise _too_many_failures(per_address, retry_after_header(left_ms / 1000))
    if isinstance(answer, Exception):
        limit_api_key(key_id, response)  # NOSCRIPT (a restarted Redis): this loads it
        return
    _answer(decision_of(answer, [bucket]), per_minute, response)


def api_rate_limit(request: Request, response: Response) -> None:
    """Dependency: limit the caller that `get_caller` put on the request (keyless: no-op)."""
    caller = getattr(request.state, "caller", None)
    key_id = getattr(caller, "key_id", None)
    if isinstance(key_id, str):
        limit_api_key(key_id, response)


def _too_many_failures(per_minute: int, wait: str) -> HTTPException:
    return HTTPException(
        status.HTTP_429_TOO_MANY_REQUESTS,
        f"too many failed API-key authentications from this address (limit {per_minute} "
        f"per minute); retry in {wait} s",
        headers={"Retry-After": wait},
    )


def check_auth_block(address: str) -> None:
    """Raise 429 while the address is blocked for failing to authenticate too often."""
    per_minute = get_settings().api_auth_failures_per_minute
    if per_minute <= 0:
        return
    try:
        left_ms = int(get_redis().pttl(AUTH_BLOCK_PREFIX + address))
    except (RedisError, SettingsError) as exc:
        log.warning("failed-authentication limit not checked (no Redis): %s", exc)
        return
    if left_ms > 0:
        raise _too_many_failures(per_minute, retry_after_header(left_ms / 1000))


def record_auth_failure(address: str) -> None:
    """Count a failed authentication; past the limit, block the address and raise 429."""
    per_minute = get_settings().api_auth_failures_per_minute
    if per_minute <= 0:
        return
    try:
        decision = acquire(AUTH_FAILURE_PREFIX + address, Rate(per_minute, 60.0, burst=per_minute))
        if decision.allowed:
            return
        wait = retry_after_header(decision.retry_after)
        # Blocked for as long as the answer says, in whole seconds.
        get_redis().set(AUTH_BLOCK_PREFIX + address, "1", ex=int(wait))
    except (RedisError, SettingsError) as exc:
        log.warning("failed-authentication limit not counted (no Redis): %s", exc)
        return
    raise _too_many_failures(per_minute, wait)
