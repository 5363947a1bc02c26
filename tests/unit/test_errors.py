"""Error classification and retry backoff."""

from __future__ import annotations

import random

import httpx
import pytest
import redis.exceptions
from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
from sqlalchemy.exc import OperationalError

from conveyor.core.errors import (
    ErrorKind,
    PermanentError,
    TransientError,
    backoff_delay,
    classify,
)

TRANSIENT = ErrorKind.TRANSIENT
PERMANENT = ErrorKind.PERMANENT


class PaymentDeclined(Exception):
    pass


class RateLimited(ValueError):
    pass


@pytest.mark.parametrize(
    "exc",
    [
        TransientError("try later"),
        ConnectionError("reset"),
        ConnectionRefusedError("refused"),
        ConnectionResetError("reset by peer"),
        TimeoutError("slow"),
        httpx.ConnectError("no route"),
        httpx.ReadTimeout("read timed out"),
        redis.exceptions.ConnectionError("redis down"),
        redis.exceptions.TimeoutError("redis slow"),
        OperationalError("SELECT 1", {}, Exception("server closed the connection")),
    ],
    ids=lambda exc: type(exc).__name__,
)
def test_network_and_service_failures_are_transient(exc: BaseException) -> None:
    assert classify(exc) is TRANSIENT


@pytest.mark.parametrize(
    "exc",
    [
        PermanentError("bad input"),
        ValueError("not a number"),
        TypeError("wrong type"),
        KeyError("missing"),
        IndexError("out of range"),
        AttributeError("no attribute"),
        NotImplementedError(),
        SoftTimeLimitExceeded(),
        TimeLimitExceeded(),
    ],
    ids=lambda exc: type(exc).__name__,
)
def test_bad_input_and_programming_errors_are_permanent(exc: BaseException) -> None:
    assert classify(exc) is PERMANENT


@pytest.mark.parametrize(
    "exc",
    [RuntimeError("?"), PaymentDeclined("?"), Exception("?"), OSError("?")],
    ids=lambda exc: type(exc).__name__,
)
def test_unknown_errors_are_retried(exc: BaseException) -> None:
    assert classify(exc) is TRANSIENT


def test_subclasses_follow_their_base() -> None:
    class Unreachable(TransientError):
        pass

    class Invalid(PermanentError):
        pass

    assert classify(Unreachable()) is TRANSIENT
    assert classify(Invalid()) is PERMANENT


def test_an_explicit_transient_error_wins_over_a_permanent_base() -> None:
    class FlakyParse(TransientError, ValueError):
        pass

    assert classify(FlakyParse()) is TRANSIENT


def test_task_specific_permanent_errors_win_over_transient_defaults() -> None:
    assert classify(ConnectionRefusedError(), permanent=(ConnectionError,)) is PERMANENT
    assert classify(PaymentDeclined(), permanent=(PaymentDeclined,)) is PERMANENT
    # Only the listed type is affected.
    assert classify(TimeoutError(), permanent=(ConnectionError,)) is TRANSIENT


def test_task_specific_transient_errors_win_over_permanent_defaults() -> None:
    assert classify(RateLimited("429"), transient=(RateLimited,)) is TRANSIENT
    assert classify(ValueError("x"), transient=(RateLimited,)) is PERMANENT
    assert classify(SoftTimeLimitExceeded(), transient=(SoftTimeLimitExceeded,)) is TRANSIENT


def test_error_kinds_are_plain_strings() -> None:
    assert TRANSIENT == "transient"
    assert PERMANENT == "permanent"


# --- backoff -----------------------------------------------------------------------------


def samples(retries: int, *, base: float, maximum: float, seed: int, n: int = 2000) -> list[float]:
    rng = random.Random(seed)
    return [backoff_delay(retries, base=base, maximum=maximum, rng=rng) for _ in range(n)]


@pytest.mark.parametrize("retries", range(12))
def test_backoff_is_full_jitter_under_an_exponential_ceiling(retries: int) -> None:
    ceiling = min(600.0, 1.5 * 2**retries)
    delays = samples(retries, base=1.5, maximum=600.0, seed=retries)
    assert all(0 <= delay <= ceiling for delay in delays)
    # Full jitter: the whole range is used, not a band near the ceiling.
    assert max(delays) > 0.95 * ceiling
    assert min(delays) < 0.05 * ceiling
    assert 0.4 * ceiling < sum(delays) / len(delays) < 0.6 * ceiling


def test_backoff_ceiling_doubles_until_capped() -> None:
    highest = [max(samples(r, base=2.0, maximum=100.0, seed=7)) for r in range(10)]
    # Ceilings: 2, 4, 8, 16, 32, 64, then capped at 100.
    for r in range(5):
        assert highest[r] <= 2.0 * 2**r
        assert highest[r + 1] > 2.0 * 2**r  # the next ceiling is above this one
    for r in range(6, 10):
        assert 95.0 < highest[r] <= 100.0


def test_backoff_never_exceeds_the_maximum_for_large_retry_counts() -> None:
    for retries in (20, 50, 100, 500):
        assert all(0 <= d <= 30.0 for d in samples(retries, base=1, maximum=30.0, seed=retries))


def test_backoff_survives_a_huge_retry_count_with_a_float_base() -> None:
    assert 0 <= backoff_delay(1024, base=2.0, maximum=600.0, rng=random.Random(1)) <= 600.0


@pytest.mark.parametrize("retries", [-1, -5, -1000])
def test_negative_retries_count_as_zero(retries: int) -> None:
    negative = samples(retries, base=3.0, maximum=600.0, seed=11)
    zero = samples(0, base=3.0, maximum=600.0, seed=11)
    assert negative == zero
    assert all(0 <= d <= 3.0 for d in negative)


def test_backoff_is_reproducible_with_a_seeded_rng() -> None:
    assert samples(4, base=1, maximum=60, seed=42, n=50) == samples(
        4, base=1, maximum=60, seed=42, n=50
    )
    assert samples(4, base=1, maximum=60, seed=42, n=50) != samples(
        4, base=1, maximum=60, seed=43, n=50
    )


def test_backoff_without_an_rng_uses_the_module_random() -> None:
    delays = {backoff_delay(3, base=1.0, maximum=600.0) for _ in range(200)}
    assert all(0 <= d <= 8.0 for d in delays)
    assert len(delays) > 150  # jittered, not a constant
