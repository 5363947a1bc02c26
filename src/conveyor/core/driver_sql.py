"""A statement run on every job, as plain SQL on psycopg: no SQLAlchemy execution per call.

Through SQLAlchemy Core an `UPDATE … RETURNING` costs about 0.4 ms of CPU here; the same SQL
sent straight to psycopg costs half that, and psycopg prepares it on the server after a few
runs. The statement is compiled once per dialect, its fixed values already converted as
SQLAlchemy would send them; each call converts only its own values. A driver error is raised
as SQLAlchemy's, and a dropped connection is invalidated, so `db.retry_on_disconnect` and the
outage handlers see what they always see. On other drivers (SQLite) the Core statement runs.

A `relaxed` statement (a job's `started` write, its progress) commits without waiting for
PostgreSQL to flush it to disk (`synchronous_commit = off` for that statement alone). Only a
crash of PostgreSQL itself, or a failover to a standby, can lose it, and only the last few
hundred milliseconds of such writes; the next write that does wait (the job's end) makes it
durable too. What that means
for a job is in docs/operations.md.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.dml import UpdateBase

RELAXED_COMMIT = "SET LOCAL synchronous_commit TO off; "


@dataclass(frozen=True)
class _Compiled:
    sql: str
    fixed: dict[str, Any]
    converters: dict[str, Callable[[Any], Any]]


class DriverStatement:
    """`statement` with its per-call parameters named in `per_call`."""

    def __init__(
        self, statement: UpdateBase, per_call: tuple[str, ...], *, relaxed: bool = False
    ) -> None:
        self.statement = statement
        self.per_call = per_call
        # Committed without waiting for the disk (module docstring), on autocommit connections.
        self.relaxed = relaxed
        self._compiled: dict[tuple[str, tuple[tuple[str | None, str | None], ...]], _Compiled] = {}

    def first(self, connection: Connection, values: Mapping[str, Any]) -> dict[str, Any] | None:
        """Run it with `values` (exactly the per-call names); the first row returned."""
        if connection.dialect.driver != "psycopg":
            row = connection.execute(self.statement, dict(values)).mappings().first()
            return dict(row) if row is not None else None
        return _run(connection, *self._bound(connection, values), fetch=True, relaxed=self.relaxed)

    def execute(self, connection: Connection, values: Mapping[str, Any]) -> None:
        """Run it with `values`, for a statement that returns no rows."""
        if connection.dialect.driver != "psycopg":
            connection.execute(self.statement, dict(values))
            return
        _run(connection, *self._bound(connection, values), fetch=False, relaxed=self.relaxed)

    def _bound(
        self, connection: Connection, values: Mapping[str, Any]
    ) -> tuple[str, dict[str, Any]]:
        compiled = self._compile(connection.dialect, _schemas(connection))
        parameters = dict(compiled.fixed)
        for name, value in values.items():
            convert = compiled.converters.get(name)
            parameters[name] = value if convert is None or value is None else convert(value)
        return compiled.sql, parameters

    def _compile(
        self, dialect: Dialect, schemas: tuple[tuple[str | None, str | None], ...]
    ) -> _Compiled:
        key = (dialect.name, schemas)
        compiled = self._compiled.get(key)
        if compiled is not None:
            return compiled
        unset = dict.fromkeys(self.per_call)
        # The engine's schema (CONVEYOR_DATABASE_SCHEMA) written into the SQL, as SQLAlchemy
        # would at execution.
        statement = self.statement.compile(
            dialect=dialect, schema_translate_map=dict(schemas), render_schema_translate=True
        )
        fixed: dict[str, Any] = {}
        converters: dict[str, Callable[[Any], Any]] = {}
        for name, value in statement.construct_params(unset).items():
            bind = statement.binds[name]
            convert = bind.type.dialect_impl(dialect).bind_processor(dialect)
            if name in unset:
                if convert is not None:
                    converters[name] = convert
            else:
                fixed[name] = convert(value) if convert is not None else value
        compiled = _Compiled(statement.string, fixed, converters)
        self._compiled[key] = compiled
        return compiled


def _schemas(connection: Connection) -> tuple[tuple[str | None, str | None], ...]:
    translate = connection.get_execution_options().get("schema_translate_map") or {}
    return tuple(sorted(translate.items(), key=lambda item: item[0] or ""))


def _run(
    connection: Connection, sql: str, parameters: dict[str, Any], *, fetch: bool, relaxed: bool
) -> dict[str, Any] | None:
    from psycopg import ClientCursor, Error
    from psycopg.rows import dict_row

    driver: Any = connection.connection.driver_connection
    try:
        if relaxed and driver.autocommit:
            # One round trip, one implicit transaction: the SET applies to this statement
            # only. Values are quoted by psycopg on the client (a multi-statement query
            # cannot carry bound parameters).
            with ClientCursor(driver, row_factory=dict_row) as client_side:
                client_side.execute(RELAXED_COMMIT + sql, parameters)
                client_side.nextset()
                relaxed_row: dict[str, Any] | None = client_side.fetchone() if fetch else None
                return relaxed_row
        with driver.cursor(row_factory=dict_row) as cursor:
            cursor.execute(sql, parameters)
            row: dict[str, Any] | None = cursor.fetchone() if fetch else None
            return row
    except Error as exc:
        dropped = connection.dialect.is_disconnect(exc, driver, None)  # type: ignore[arg-type]
        if dropped:
            connection.invalidate(exc)
        raise DBAPIError.instance(
            sql, None, exc, Error, connection_invalidated=dropped, dialect=connection.dialect
        ) from exc
