"""Engines and sessions, one engine per process.

A connection pool must never cross a fork: a prefork worker child that reused its parent's
sockets would interleave bytes with its siblings. Engines are therefore keyed by process id
and built lazily in the process that uses them.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from conveyor.core.private import private_file
from conveyor.core.settings import Settings, SettingsError, get_settings

log = logging.getLogger(__name__)
_lock = threading.Lock()
# Keyed by process id, URL and schema.
_engines: dict[tuple[int, str, str | None], Engine] = {}
_factories: dict[tuple[int, str, str | None], sessionmaker[Session]] = {}


def prepare_sqlite_file(url: str) -> None:
    """Create a SQLite database file (and its directory) for its owner's eyes only before
    SQLite opens it: SQLite gives its -wal and -shm files the database file's mode."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database:
        return
    if parsed.database == ":memory:" or parsed.database.startswith("file:"):
        return
    private_file(Path(parsed.database))


def ledger_schema(settings: Settings) -> str | None:
    """CONVEYOR_DATABASE_SCHEMA, refused on SQLite, which has no schemas."""
    schema = settings.database_schema
    if schema is not None and make_url(settings.database).get_backend_name() == "sqlite":
        raise SettingsError(
            "CONVEYOR_DATABASE_SCHEMA is set but the database is SQLite, which has no schemas: "
            "unset it, or set CONVEYOR_DATABASE_URL to a PostgreSQL database"
        )
    return schema


def build_engine(
    url: str, *, pool_size: int = 5, pool_recycle: int = 1800, schema: str | None = None
) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        prepare_sqlite_file(url)
        engine = create_engine(
            url,
            connect_args={"timeout": 30, "check_same_thread": False},
            pool_pre_ping=True,
            hide_parameters=True,
        )
        event.listen(engine, "connect", _configure_sqlite)
        return engine
    engine = create_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        # A failed statement's error (logged, shown in a traceback) names the statement but
        # not its values: they include job arguments, which may hold secrets.
        hide_parameters=True,
        # Recycle before common idle timeouts (PgBouncer, cloud load balancers) bite.
        pool_recycle=pool_recycle,
        # The tables are declared without a schema; this puts every statement in ours.
        execution_options={"schema_translate_map": {None: schema}} if schema else {},
    )
    event.listen(engine, "connect", _note_use)
    event.listen(engine, "checkin", _note_use)
    dialect = engine.dialect

    def ping_if_idle(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        if time.monotonic() - record.info.get(_USED_AT, 0.0) < FRESH_SECONDS:
            return
        try:
            dialect.do_ping(dbapi_connection)  # leaves no transaction open
        except Exception as exc:
            # The pool drops this connection and checks out another (SQLAlchemy's protocol).
            raise DisconnectionError(str(exc)) from exc

    event.listen(engine, "checkout", ping_if_idle)
    return engine


# A connection used this recently is handed out without a ping: a busy worker would otherwise
# spend a round trip per job on it. One idle longer is pinged, so a connection the server or
# a proxy dropped meanwhile is replaced before use, not found broken mid-task.
FRESH_SECONDS = 1.0
_USED_AT = "conveyor_used_at"


def _note_use(_dbapi_connection: Any, record: Any, *_: Any) -> None:
    record.info[_USED_AT] = time.monotonic()


def _configure_sqlite(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets the API read while a worker writes; busy_timeout waits instead of failing.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def get_engine(settings: Settings | None = None) -> Engine:
    settings = settings or get_settings()
    schema = ledger_schema(settings)
    key = (os.getpid(), settings.database, schema)
    engine = _engines.get(key)
    if engine is None:
        with _lock:
            engine = _engines.get(key)
            if engine is None:
                engine = build_engine(
                    settings.database,
                    pool_size=settings.db_pool_size,
                    pool_recycle=settings.db_pool_recycle,
                    schema=schema,
                )
                _engines[key] = engine
                _factories[key] = sessionmaker(engine, expire_on_commit=False)
    return engine


def session_factory(settings: Settings | None = None) -> sessionmaker[Session]:
    settings = settings or get_settings()
    get_engine(settings)
    return _factories[(os.getpid(), settings.database, settings.database_schema)]


def reset_after_fork() -> None:
    """Forget engines inherited from a parent process without closing its connections."""
    pid = os.getpid()
    with _lock:
        for key in [k for k in _engines if k[0] != pid]:
            # close=False: the sockets belong to the parent; closing them here would break it.
            _engines.pop(key).dispose(close=False)
            _factories.pop(key, None)


def dispose_all() -> None:
    with _lock:
        for key in list(_engines):
            _engines.pop(key).dispose()
            _factories.pop(key, None)


@contextmanager
def session_scope(settings: Settings | None = None) -> Iterator[Session]:
    """A session that commits on success, rolls back on error, and is always closed."""
    session = session_factory(settings)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


@contextmanager
def autocommit(settings: Settings | None = None) -> Iterator[Connection]:
    """A connection where each statement commits by itself: for single-statement writes."""
    with get_engine(settings).connect() as connection:
        yield connection.execution_options(isolation_level="AUTOCOMMIT")


def ping(settings: Settings | None = None) -> None:
    with get_engine(settings).connect() as connection:
        connection.execute(text("SELECT 1"))


T = TypeVar("T")
# Pauses before each further try of a write that lost its connection.
RETRY_PAUSES = (0.1, 0.5, 1.5)


def retry_on_disconnect(write: Callable[[], T]) -> T:
    """Run `write` (a whole transaction) again when the database dropped the connection
    under it (a restart, a failover, a terminated backend): the pool hands out a fresh one.

    For writes whose loss nothing else would repair, like a finished job's ledger row after
    its message was acknowledged. Other errors are raised at once.
    """
    for pause in RETRY_PAUSES:
        try:
            return write()
        except DBAPIError as exc:
            if not exc.connection_invalidated and not isinstance(exc, OperationalError):
                raise
            log.warning("database write lost its connection (%s); trying again", exc.orig)
            time.sleep(pause)
    return write()
