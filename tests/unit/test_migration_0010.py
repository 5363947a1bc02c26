"""Migration 0010 on SQLite and PostgreSQL: every table, index, constraint and sequence gets
the conveyor_ prefix with its rows kept, and back; an older install's revision moves from
`alembic_version` to `conveyor_alembic_version`, an application's stays where it is."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine, text

from conveyor.core import migrate
from conveyor.core.settings import Settings
from tests.integration.conftest import fresh_postgres_database

NOW = datetime(2026, 11, 1, tzinfo=UTC)
OLD_TABLES = {
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
}
INSERT_JOB = (
    "INSERT INTO {table} (id, name, queue, state, progress_current, attempts, args, kwargs,"
    " created_at, updated_at, events_pending) VALUES ('job-1', 't', 'default', 'queued', 0, 0,"
    " '[]', '{{}}', :now, :now, false)"
)


@pytest.fixture(params=["sqlite", "postgresql"])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Settings]:
    if request.param == "sqlite":
        yield Settings(database_url=f"sqlite:///{tmp_path / 'ledger.db'}")
        return
    with fresh_postgres_database("conveyor_mig") as url:
        yield Settings(database_url=url)


@pytest.fixture
def engine(settings: Settings) -> Iterator[Engine]:
    engine = sa.create_engine(settings.database, poolclass=sa.pool.NullPool)
    yield engine
    engine.dispose()


def object_names(engine: Engine) -> set[str]:
    """Tables, indexes, sequences and constraints: every name the schema holds."""
    with engine.connect() as connection:
        if engine.dialect.name == "sqlite":
            rows = connection.execute(
                text("SELECT name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'")
            ).scalars()
            names = set(rows)
            inspector = sa.inspect(connection)
            for table in inspector.get_table_names():
                names |= {c["name"] for c in inspector.get_unique_constraints(table) if c["name"]}
                names |= {c["name"] for c in inspector.get_check_constraints(table) if c["name"]}
            return names
        relations = connection.execute(
            text(
                "SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace"
                " UNION SELECT conname FROM pg_constraint"
                " WHERE connamespace = 'public'::regnamespace"
            )
        ).scalars()
        return set(relations)


def old_install(settings: Settings, engine: Engine) -> None:
    """A ledger at 0009 as the code before 0010 left it: unprefixed names, `alembic_version`."""
    migrate.upgrade(settings, "0009")
    migrate.upgrade(settings)
    migrate.downgrade(settings, "0009")
    with engine.begin() as connection:
        connection.execute(text("ALTER TABLE conveyor_alembic_version RENAME TO alembic_version"))
        if engine.dialect.name == "postgresql":
            connection.execute(
                text("ALTER INDEX conveyor_alembic_version_pkc RENAME TO alembic_version_pkc")
            )


def test_the_rename_keeps_the_rows_and_prefixes_every_name(
    settings: Settings, engine: Engine
) -> None:
    migrate.upgrade(settings, "0009")
    migrate.upgrade(settings)
    migrate.downgrade(settings, "0009")
    before = object_names(engine)
    assert before >= OLD_TABLES
    assert "ix_jobs_state_created" in before
    assert "uq_email_suppressions_owner" in before
    assert "ck_payments_amount_positive" in before
    with engine.begin() as connection:
        connection.execute(text(INSERT_JOB.format(table="jobs")), {"now": NOW})

    migrate.upgrade(settings)

    after = object_names(engine)
    assert not OLD_TABLES & after
    unprefixed = {name for name in after if "conveyor_" not in name}
    assert unprefixed == set()
    assert {
        "conveyor_jobs",
        "ix_conveyor_jobs_state_created",
        "ix_conveyor_jobs_events_pending",
        "uq_conveyor_email_suppressions_owner",
        "uq_conveyor_idempotency_owner_key",
        "ck_conveyor_payments_amount_positive",
    } <= after
    if engine.dialect.name == "postgresql":
        assert {
            "conveyor_jobs_pkey",
            "conveyor_api_keys_prefix_key",
            "conveyor_webhook_attempts_id_seq",
            "conveyor_webhook_attempts_delivery_id_fkey",
        } <= after
    with engine.connect() as connection:
        assert connection.execute(text("SELECT id FROM conveyor_jobs")).scalars().all() == ["job-1"]

    migrate.downgrade(settings, "0009")

    assert object_names(engine) == before
    with engine.connect() as connection:
        assert connection.execute(text("SELECT id FROM jobs")).scalars().all() == ["job-1"]


def test_a_new_install_has_prefixed_names_from_its_first_revision(
    settings: Settings, engine: Engine
) -> None:
    migrate.upgrade(settings, "0001")
    assert {"conveyor_jobs", "conveyor_dead_letters", "conveyor_api_keys"} <= object_names(engine)
    migrate.upgrade(settings)
    migrate.downgrade(settings, "base")
    assert object_names(engine) <= {"conveyor_alembic_version", "conveyor_alembic_version_pkc"}


def test_an_old_install_moves_its_revision_to_its_own_version_table(
    settings: Settings, engine: Engine
) -> None:
    old_install(settings, engine)
    assert migrate.status(settings).revision == "0009"  # read before anything moved

    # Up to this revision only: later ones have tests of their own.
    migrate.upgrade(settings, "0010")

    names = object_names(engine)
    assert "alembic_version" not in names
    assert migrate.status(settings).revision == "0010"


def test_an_application_revision_beside_an_old_install_stays(
    settings: Settings, engine: Engine
) -> None:
    old_install(settings, engine)
    with engine.begin() as connection:
        connection.execute(text("INSERT INTO alembic_version VALUES ('app0001')"))

    migrate.upgrade(settings, "0010")

    with engine.connect() as connection:
        rows = connection.execute(text("SELECT version_num FROM alembic_version")).scalars()
        assert rows.all() == ["app0001"]
        ours = connection.execute(text("SELECT version_num FROM conveyor_alembic_version"))
        assert ours.scalars().all() == ["0010"]


@pytest.mark.parametrize("revision", ["0001", "9b2e4c7d1a00"])
def test_an_application_alembic_version_is_never_touched(
    settings: Settings, engine: Engine, revision: str
) -> None:
    # An application whose revision id looks like one of ours, and that has its own `jobs`.
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE alembic_version (version_num VARCHAR(32))"))
        connection.execute(text("INSERT INTO alembic_version VALUES (:r)"), {"r": revision})
        connection.execute(text("CREATE TABLE jobs (id INTEGER PRIMARY KEY)"))
    assert migrate.status(settings).revision is None

    migrate.upgrade(settings)

    with engine.connect() as connection:
        rows = connection.execute(text("SELECT version_num FROM alembic_version")).scalars()
        assert rows.all() == [revision]
    assert migrate.status(settings).is_head
    migrate.downgrade(settings, "base")
    assert {"alembic_version", "jobs"} <= object_names(engine)
