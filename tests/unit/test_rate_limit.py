"""Rate specs, the limiter's call to Redis, wait arithmetic and the HTTP 429 (no servers)."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import HTTPException, Response
from redis.exceptions import ConnectionError as RedisConnectionError

from conveyor.api import rate_limit as api_rate_limit
from conveyor.core import rate_limit
from conveyor.core.rate_limit import (
    RATE_PREFIX,
    Bucket,
    Decision,
    Rate,
    acquire,
    parse_rate,
    reserve,
    take_all,
)
from conveyor.core.task import MAX_WAIT_DELAY, MIN_WAIT_DELAY, max_wait_delay, ticket_wait


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("10/s", Rate(10, 1.0)),
        ("10/S", Rate(10, 1.0)),
        (" 600 / m ", Rate(600, 60.0)),
        ("100/minute", Rate(100, 60.0)),
        ("1000/h", Rate(1000, 3600.0)),
        ("2/day", Rate(2, 86400.0)),
        ("5/10s", Rate(5, 10.0)),
        ("3/1.5s", Rate(3, 1.5)),
        ("10/s burst 20", Rate(10, 1.0, burst=20)),
        ("10/s, burst=20", Rate(10, 1.0, burst=20)),
        ("60/m burst: 5", Rate(60, 60.0, burst=5)),
    ],
)
def test_parse_rate(spec: str, expected: Rate) -> None:
    assert parse_rate(spec) == expected


@pytest.mark.parametrize(
    "spec", ["10", "10/", "/s", "ten/s", "10/x", "10/s burst", "10/s burst 0", "0/s", "-1/s"]
)
def test_parse_rate_rejects_nonsense(spec: str) -> None:
    with pytest.raises(ValueError, match=r"rate|burst|at least"):
        parse_rate(spec)


def test_rate_properties() -> None:
    rate = parse_rate("20/s")
    assert rate.interval == pytest.approx(0.05)
    assert rate.per_second == 20
    assert parse_rate(rate) is rate
    assert str(Rate(600, 60.0, burst=600)) == "600/60s burst 600"
    with pytest.raises(ValueError, match="period"):
        Rate(1, 0)


class FakeRedis:
    def __init__(self, reply: list[Any]) -> None:
        self.reply = reply
        self.calls: list[tuple[Any, ...]] = []

    def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> Any:
        self.calls.append(keys_and_args)
        return self.reply


def test_acquire_sends_microseconds_and_reads_the_decision() -> None:
    client = FakeRedis([0, "250000", 0, 1])
    decision = acquire("smtp:mailgun", "10/s burst 3", client=client)  # type: ignore[arg-type]
    assert decision == Decision(allowed=False, retry_after=0.25)
    # Redis's clock; interval 100 ms, burst window 300 ms, cost 1, no reservation horizon.
    assert client.calls == [(RATE_PREFIX + "smtp:mailgun", "", 100_000, 300_000, 1, 0)]

    allowed = acquire("k", Rate(1, 1.0), client=FakeRedis([1, 0, 4, 0]), at=12.5)  # type: ignore[arg-type]
    assert allowed == Decision(allowed=True, retry_after=0.0, remaining=4)


def test_reserve_books_within_its_horizon() -> None:
    client = FakeRedis([2, "1500000", 0, 0])
    decision = reserve("k", "2/s", horizon=5, client=client, at=100.0)  # type: ignore[arg-type]
    assert decision.reserved
    assert not decision.allowed
    assert decision.retry_after == 1.5
    assert client.calls == [(RATE_PREFIX + "k", 100_000_000, 500_000, 500_000, 1, 5_000_000)]
    with pytest.raises(ValueError, match="horizon"):
        reserve("k", "2/s", horizon=-1)
    with pytest.raises(ValueError, match="cost"):
        acquire("k", "2/s", cost=0)


def test_take_all_asks_every_bucket_in_one_call_and_names_the_one_that_refused() -> None:
    client = FakeRedis([0, "70000", 0, 2])
    buckets = [
        Bucket("email:provider", "100/s", horizon=10),
        Bucket("email:domain:slow.example.org", "20/s", cost=3),
    ]
    decision = take_all(buckets, client=client, at=50.0)  # type: ignore[arg-type]
    assert decision == Decision(
        allowed=False, retry_after=0.07, refused_by="email:domain:slow.example.org"
    )
    assert client.calls == [
        (
            RATE_PREFIX + "email:provider",
            RATE_PREFIX + "email:domain:slow.example.org",
            50_000_000,
            *(10_000, 10_000, 1, 10_000_000),
            *(50_000, 50_000, 3, 0),
        )
    ]
    nothing = FakeRedis([])
    assert take_all([], client=nothing).allowed  # type: ignore[arg-type]
    assert nothing.calls == []  # no limits: no round trip
    with pytest.raises(ValueError, match="cost"):
        take_all([Bucket("k", "1/s", cost=0)], client=nothing)  # type: ignore[arg-type]


def test_retry_after_header_is_whole_seconds_rounded_up() -> None:
    assert [rate_limit.retry_after_header(s) for s in (0, 0.01, 1.0, 1.2, 59.9)] == [
        "1",
        "1",
        "1",
        "2",
        "60",
    ]


def test_wait_delay_fits_in_the_visibility_timeout() -> None:
    assert max_wait_delay(3900, 360) == MAX_WAIT_DELAY
    assert max_wait_delay(30, 25) == 2.5
    assert max_wait_delay(30, 5) == 12.5
    assert max_wait_delay(20, 30) == MIN_WAIT_DELAY


def test_ticket_wait() -> None:
    assert ticket_wait(10.0, 9.5, grace=0.1) == pytest.approx(0.5)
    assert ticket_wait(10.0, 10.05, grace=0.1) == 0.0
    assert ticket_wait(10.0, 10.2, grace=0.1) is None


def test_http_limit_answers_429_with_retry_after(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVEYOR_API_RATE_LIMIT_PER_MINUTE", "30")
    seen: list[tuple[str, Rate]] = []

    def deny(key: str, rate: Rate) -> Decision:
        seen.append((key, rate))
        return Decision(allowed=False, retry_after=1.2)

    monkeypatch.setattr(api_rate_limit, "acquire", deny)
    with pytest.raises(HTTPException) as caught:
        api_rate_limit.limit_api_key("key1")
    assert caught.value.status_code == 429
    assert caught.value.headers is not None
    assert caught.value.headers["Retry-After"] == "2"
    assert "30 requests per minute" in str(caught.value.detail)
    assert seen == [("api:key:key1", Rate(30, 60.0, burst=30))]

    monkeypatch.setattr(api_rate_limit, "acquire", lambda key, rate: Decision(True, remaining=7))
    response = Response()
    api_rate_limit.limit_api_key("key1", response)
    assert response.headers["X-RateLimit-Remaining"] == "7"
    assert response.headers["X-RateLimit-Limit"] == "30"


def test_http_limit_off_at_zero_and_open_when_redis_is_down(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(key: str, rate: Rate) -> Decision:
        raise RedisConnectionError("down")

    monkeypatch.setattr(api_rate_limit, "acquire", broken)
    api_rate_limit.limit_api_key("key1")  # fails open
    monkeypatch.setenv("CONVEYOR_API_RATE_LIMIT_PER_MINUTE", "0")
    from conveyor.core.settings import get_settings

    get_settings.cache_clear()
    api_rate_limit.limit_api_key("key1")  # off: never asks Redis
