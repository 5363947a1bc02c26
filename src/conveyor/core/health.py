"""Readiness checks: each answers None when healthy, or a reason a person can act on."""

from __future__ import annotations

from celery import Celery

from conveyor.core import db
from conveyor.core.celery_app import get_celery
from conveyor.core.settings import Settings, get_settings

WORKER_PING_TIMEOUT = 1.0


def check_database(settings: Settings | None = None) -> str | None:
    try:
        db.ping(settings)
    except Exception as exc:
        return f"database unreachable: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    return None


def check_broker(app: Celery | None = None) -> str | None:
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
    settings = settings or get_settings()
    broker = check_broker()
    return {
        "database": check_database(settings),
        "broker": broker,
        "workers": check_workers() if broker is None else "skipped: broker unreachable",
    }
