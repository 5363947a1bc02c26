"""How CLI commands find the system they operate on, and what they say when there is none."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from conveyor.core.db import session_scope
from conveyor.core.preflight import require_redis
from conveyor.core.redaction import safe_url
from conveyor.core.settings import Settings, SettingsError, get_settings


def require_ledger(settings: Settings) -> None:
    """Refuse to invent an empty SQLite ledger where no system ever ran."""
    url = make_url(settings.database)
    if settings.database_url is not None or url.get_backend_name() != "sqlite":
        return
    if url.database and not Path(url.database).exists():
        raise SettingsError(settings.nothing_running("CONVEYOR_DATABASE_URL"))


@contextmanager
def ledger_session() -> Iterator[Session]:
    """A session on the ledger of the system this command talks to."""
    require_ledger(get_settings())
    with session_scope() as session:
        yield session


def require_broker() -> None:
    """Fail in seconds with one line, before a publish would retry for a long while."""
    settings = get_settings()
    require_redis(settings)
    if settings.broker != settings.redis:
        from conveyor.core.health import check_broker

        problem = check_broker()
        if problem is not None:
            raise SettingsError(f"{problem} (CONVEYOR_BROKER_URL={safe_url(settings.broker)})")


def describe(settings: Settings) -> list[tuple[str, str]]:
    """Which system this command reads, and why: for `conveyor status`."""
    rows = [
        ("Redis", f"{safe_url(settings.redis)} ({settings.source_of('redis_url')})"),
        ("Database", f"{safe_url(settings.database)} ({settings.source_of('database_url')})"),
    ]
    if settings.runtime is not None:
        rows.append(("API", settings.runtime.api_url))
    return rows
