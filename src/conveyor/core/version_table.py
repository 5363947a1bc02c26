"""Conveyor's own Alembic version table, and the move into it of an older install's revision.

Installs made before Conveyor shared databases kept their revision in Alembic's default
`alembic_version`, which is the application's when the two share a database. The revision
moves over only when it is one of Conveyor's and Conveyor's tables of that time are there: an
application whose revision ids look like ours ("0001") keeps its table untouched.
"""

from __future__ import annotations

from collections.abc import Collection

import sqlalchemy as sa
from sqlalchemy import Connection

VERSION_TABLE = "conveyor_alembic_version"
LEGACY_VERSION_TABLE = "alembic_version"
# The first revision's tables, under the names they had before revision 0010.
LEGACY_TABLES = ("jobs", "dead_letters", "api_keys")


def _versions(name: str, schema: str | None) -> sa.Table:
    # The shape Alembic gives a version table.
    return sa.Table(
        name,
        sa.MetaData(),
        sa.Column("version_num", sa.String(32), nullable=False),
        sa.PrimaryKeyConstraint("version_num", name=f"{name}_pkc"),
        schema=schema,
    )


def legacy_revisions(
    connection: Connection, schema: str | None, known: Collection[str]
) -> list[str]:
    """Conveyor's revisions in `alembic_version`, when they are still to move over."""
    inspector = sa.inspect(connection)
    if inspector.has_table(VERSION_TABLE, schema=schema):
        return []
    if not inspector.has_table(LEGACY_VERSION_TABLE, schema=schema):
        return []
    if not all(inspector.has_table(table, schema=schema) for table in LEGACY_TABLES):
        return []
    legacy = _versions(LEGACY_VERSION_TABLE, schema)
    found = connection.execute(sa.select(legacy.c.version_num)).scalars()
    return [revision for revision in found if revision in known]


def adopt_legacy_version(
    connection: Connection, schema: str | None, known: Collection[str]
) -> None:
    """Move Conveyor's revision to its own table; drop `alembic_version` if it is then empty."""
    ours = legacy_revisions(connection, schema, known)
    if not ours:
        return
    legacy = _versions(LEGACY_VERSION_TABLE, schema)
    own = _versions(VERSION_TABLE, schema)
    own.create(connection)
    connection.execute(own.insert(), [{"version_num": revision} for revision in ours])
    connection.execute(legacy.delete().where(legacy.c.version_num.in_(ours)))
    if connection.execute(sa.select(sa.func.count()).select_from(legacy)).scalar_one() == 0:
        legacy.drop(connection)
