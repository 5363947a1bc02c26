"""The ledger's connection pool on PostgreSQL: a connection used moments ago is handed out
without a ping; one idle longer is pinged, and replaced when the server dropped it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine, text

from conveyor.core import db
from tests.integration.conftest import PG_ADMIN_URL, fresh_postgres_database


@pytest.fixture
def engine() -> Iterator[Engine]:
    with fresh_postgres_database("conveyor_pool") as url:
        built = db.build_engine(url.replace("postgresql://", "postgresql+psycopg://"))
        try:
            yield built
        finally:
            built.dispose()


def _backend(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(text("SELECT pg_backend_pid()")).scalar_one())


def test_only_an_idle_connection_is_pinged_and_a_dropped_one_replaced(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    pings: list[Any] = []
    real_ping = engine.dialect.do_ping
    monkeypatch.setattr(
        engine.dialect, "do_ping", lambda conn: pings.append(conn) or real_ping(conn)
    )

    first = _backend(engine)
    assert _backend(engine) == first
    assert pings == [], "a connection used moments ago was pinged"

    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (first,))
    monkeypatch.setattr(db, "FRESH_SECONDS", 0.0)  # as if it had been idle a while
    replaced = _backend(engine)
    assert len(pings) >= 1
    assert replaced != first, "the dropped connection was handed out"
