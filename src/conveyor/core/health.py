"""Readiness checks: each answers None when healthy, or a reason a person can act on."""

from __future__ import annotations

import redis
from celery import Celery

from conveyor.core import brokers, db
from conveyor.core.celery_app import get_celery
from conveyor.core.redis_client import connect
from conveyor.core.settings import Settings, get_settings

WORKER_PING_TIMEOUT = 1.0


def check_database(settings: Settings | None = None) -> str | None:
    try:
        db.ping(settings)
    except Exception as exc:
        return f"database unreachable: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    return None


def check_redis(
    url: str, what: str, timeout: float, settings: Settings | None = None
) -> str | None:
    """A real round trip: a frozen Redis accepts connections but never answers them."""
    try:
        client = connect(
            url, settings or get_settings(), socket_timeout=timeout, socket_connect_timeout=timeout
        )
        try:
            client.ping()
        finally:
            client.close()
    except (redis.RedisError, OSError) as exc:
        return f"{what} unreachable: {type(exc).__name__}: {str(exc)[:200]}"
    return None


def check_broker(app: Celery | None = None, settings: Settings | None = None) -> str | None:
    settings = settings or get_settings()
    if brokers.is_redis(settings.broker):
        return check_redis(settings.broker, "broker", settings.redis_timeout_seconds, settings)
    app = app or get_celery()
    try:
        with app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=2)
    except Exception as exc:
        return f"broker unreachable: {type(exc).__name__}: {str(exc)[:200]}"
    return None


def live_workers(app: Celery | None = None, timeout: float = WORKER_PING_TIMEOUT) -> list[str]:
    app = app or get_celery()
    replies = app.control.ping(timeout=timeout) or []
    return sorted(name for reply in replies for name in reply)


def check_workers(app: Celery | None = None) -> str | None:
    try:
        workers = live_workers(app)
    except Exception as exc:
        return f"could not ping workers: {type(exc).__name__}: {str(exc)[:200]}"
    if not workers:
        return f"no worker answered a ping within {WORKER_PING_TIMEOUT:g}s"
    return None


def readiness(settings: Settings | None = None) -> dict[str, str | None]:
    """What the API itself needs. Never workers: an API without workers still accepts jobs,
    and failing readiness for want of one would take every API instance out of service."""
    settings = settings or get_settings()
    checks = {"database": check_database(settings), "broker": check_broker(settings=settings)}
    if settings.redis != settings.broker:
        checks["redis"] = check_redis(
            settings.redis, "redis", settings.redis_timeout_seconds, settings
        )
    return checks
