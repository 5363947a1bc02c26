"""every table, index, constraint and sequence prefixed with conveyor_

So Conveyor can share the application's database: `jobs`, `payments` or `ix_jobs_state`
may be the application's own (index names are schema-wide on PostgreSQL).

Installs made before this revision are renamed; newer ones were created with the prefixed
names (see names.py) and are left as they are. The downgrade renames back, unless an old name
now belongs to someone else (the application's `jobs`): then the tables keep their prefixed
names, which the earlier revisions understand too.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-27 18:30:00
"""

import logging
import re
from collections.abc import Callable, Sequence

import sqlalchemy as sa
from alembic import op

from conveyor.migrations.names import prefixed, unprefixed

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

log = logging.getLogger(__name__)

# Parents before children, as created.
TABLES = (
    "api_keys",
    "dead_letters",
    "jobs",
    "idempotency_keys",
    "task_effects",
    "webhook_endpoints",
    "webhook_deliveries",
    "webhook_attempts",
    "email_batches",
    "email_suppressions",
    "emails",
    "stored_files",
    "payments",
    "payment_refunds",
    "payment_balance_entries",
    "payment_gateway_events",
    "images",
    "image_variants",
)
_INDEX_NAME = re.compile(r'^(CREATE (?:UNIQUE )?INDEX (?:IF NOT EXISTS )?)"?(\w+)"?')


def upgrade() -> None:
    bind = op.get_bind()
    if sa.inspect(bind).has_table(prefixed("jobs")):
        return  # created with the prefixed names
    for table in TABLES:
        _rename(table, prefixed(table), prefixed)


def downgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    taken = [table for table in TABLES if inspector.has_table(table)]
    if taken:
        log.warning(
            "keeping the conveyor_ table names: %s now belong to another application",
            ", ".join(taken),
        )
        return
    for table in reversed(TABLES):
        _rename(prefixed(table), table, unprefixed)


def _rename(old: str, new: str, rename: Callable[[str], str]) -> None:
    op.rename_table(old, new)
    if op.get_bind().dialect.name == "sqlite":
        _rename_sqlite_objects(new, rename)
    else:
        _rename_postgresql_objects(new, rename)


def _rename_postgresql_objects(table: str, rename: Callable[[str], str]) -> None:
    bind = op.get_bind()
    quote = bind.dialect.identifier_preparer.quote
    # Renaming a key or unique constraint renames its index too.
    constraints = bind.execute(
        sa.text("SELECT conname FROM pg_constraint WHERE conrelid = to_regclass(:t)"),
        {"t": table},
    ).scalars()
    for name in list(constraints):
        if rename(name) != name:
            op.execute(
                f"ALTER TABLE {quote(table)} RENAME CONSTRAINT {quote(name)} TO {quote(rename(name))}"
            )
    indexes = bind.execute(
        sa.text(
            "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
            " WHERE i.indrelid = to_regclass(:t)"
        ),
        {"t": table},
    ).scalars()
    for name in list(indexes):
        if rename(name) != name:
            op.execute(f"ALTER INDEX {quote(name)} RENAME TO {quote(rename(name))}")
    sequences = bind.execute(
        sa.text(
            "SELECT s.relname FROM pg_depend d JOIN pg_class s ON s.oid = d.objid"
            " WHERE d.refobjid = to_regclass(:t) AND s.relkind = 'S'"
        ),
        {"t": table},
    ).scalars()
    for name in list(sequences):
        if rename(name) != name:
            op.execute(f"ALTER SEQUENCE {quote(name)} RENAME TO {quote(rename(name))}")


def _rename_sqlite_objects(table: str, rename: Callable[[str], str]) -> None:
    bind = op.get_bind()
    inspector = sa.inspect(bind)
    uniques = [
        (u["name"], u["column_names"])
        for u in inspector.get_unique_constraints(table)
        if u["name"] and rename(u["name"]) != u["name"]
    ]
    checks = [
        (c["name"], c["sqltext"])
        for c in inspector.get_check_constraints(table)
        if c["name"] and rename(c["name"]) != c["name"]
    ]
    if uniques or checks:
        # SQLite keeps constraint names in the table's definition: only a rebuild renames them.
        with op.batch_alter_table(table, recreate="always") as batch:
            for name, columns in uniques:
                batch.drop_constraint(name, type_="unique")
                batch.create_unique_constraint(rename(name), columns)
            for name, sqltext in checks:
                batch.drop_constraint(name, type_="check")
                batch.create_check_constraint(rename(name), sa.text(sqltext))
    # No ALTER INDEX in SQLite: each index is made again from its own definition.
    indexes = bind.execute(
        sa.text(
            "SELECT name, sql FROM sqlite_master"
            " WHERE type = 'index' AND tbl_name = :t AND sql IS NOT NULL"
        ),
        {"t": table},
    ).all()
    for name, sql in indexes:
        if rename(name) != name:
            op.execute(f'DROP INDEX "{name}"')
            op.execute(_INDEX_NAME.sub(lambda m: f'{m[1]}"{rename(m[2])}"', sql, count=1))
