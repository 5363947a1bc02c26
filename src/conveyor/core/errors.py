"""Error classification: what is worth retrying, and what belongs in the dead-letter store."""

from __future__ import annotations

import random
import socket
from enum import StrEnum

from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded


class TransientError(Exception):
    """A failure that may pass on its own: retry with backoff."""


class PermanentError(Exception):
    """A failure that another attempt cannot fix: dead-letter at once."""


class JobCancelled(Exception):
    """Raised inside a task when its job was cancelled; the task stops cleanly."""


class ErrorKind(StrEnum):
    TRANSIENT = "transient"
    PERMANENT = "permanent"


# Failures of the network and of services on the other end usually pass.
DEFAULT_TRANSIENT: tuple[type[BaseException], ...] = (
    TransientError,
    ConnectionError,
    TimeoutError,
    socket.timeout,
)

# Bad input and programming errors give the same result every time.
DEFAULT_PERMANENT: tuple[type[BaseException], ...] = (
    PermanentError,
    ValueError,
    TypeError,
    KeyError,
    LookupError,
    AttributeError,
    NotImplementedError,
    SoftTimeLimitExceeded,
    TimeLimitExceeded,
)


def _transient_extras() -> tuple[type[BaseException], ...]:
    extras: list[type[BaseException]] = []
    try:
        import httpx

        extras.append(httpx.TransportError)
    except ImportError:  # pragma: no cover - httpx is a dependency
        pass
    try:
        import redis.exceptions

        extras.extend([redis.exceptions.ConnectionError, redis.exceptions.TimeoutError])
    except ImportError:  # pragma: no cover - redis is a dependency
        pass
    from sqlalchemy.exc import OperationalError

    extras.append(OperationalError)
    return tuple(extras)


TRANSIENT_LIBRARY_ERRORS = _transient_extras()


def classify(
    exc: BaseException,
    *,
    transient: tuple[type[BaseException], ...] = (),
    permanent: tuple[type[BaseException], ...] = (),
) -> ErrorKind:
    """Task-specific lists win over the defaults; anything unknown is retried.

    Unknown errors are retried because an unfamiliar failure is more often a flaky
    dependency than a bug, and retries are bounded: the job still ends as a dead letter.
    """
    if permanent and isinstance(exc, permanent):
        return ErrorKind.PERMANENT
    if transient and isinstance(exc, transient):
        return ErrorKind.TRANSIENT
    if isinstance(exc, DEFAULT_TRANSIENT + TRANSIENT_LIBRARY_ERRORS):
        return ErrorKind.TRANSIENT
    if isinstance(exc, DEFAULT_PERMANENT):
        return ErrorKind.PERMANENT
    return ErrorKind.TRANSIENT


def backoff_delay(
    retries: int, *, base: float, maximum: float, rng: random.Random | None = None
) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(maximum, base * 2**retries)].

    Full jitter spreads a burst of failures so the retries do not arrive together.
    """
    try:
        ceiling = min(maximum, base * (2 ** max(retries, 0)))
    except OverflowError:  # 2**retries beyond a float: far past the cap anyway
        ceiling = maximum
    return (rng or random).uniform(0, ceiling)
