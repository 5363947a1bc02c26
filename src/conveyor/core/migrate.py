"""Alembic, driven from code so `conveyor db ...` works wherever the package is installed."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, pool

from conveyor.core.db import ledger_schema, prepare_sqlite_file
from conveyor.core.settings import Settings, get_settings
from conveyor.core.version_table import VERSION_TABLE, legacy_revisions

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def alembic_config(settings: Settings | None = None) -> Config:
    settings = settings or get_settings()
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # '%' is Alembic's interpolation character; a password may contain it.
    config.set_main_option("sqlalchemy.url", settings.database.replace("%", "%%"))
    config.attributes["database_schema"] = ledger_schema(settings)
    return config


def upgrade(settings: Settings | None = None, revision: str = "head") -> None:
    settings = settings or get_settings()
    # Alembic opens the database itself: create a SQLite file private first.
    prepare_sqlite_file(settings.database)
    command.upgrade(alembic_config(settings), revision)


def downgrade(settings: Settings, revision: str) -> None:
    prepare_sqlite_file(settings.database)
    command.downgrade(alembic_config(settings), revision)


def current_head() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


@dataclass(frozen=True)
class Status:
    revision: str | None  # None: no Conveyor table yet
    head: str | None

    @property
    def is_head(self) -> bool:
        return self.revision is not None and self.revision == self.head


@dataclass(frozen=True)
class Revision:
    id: str
    title: str
    is_head: bool


def status(settings: Settings | None = None) -> Status:
    """The applied revision, read without changing anything (an older install's too)."""
    settings = settings or get_settings()
    config = alembic_config(settings)
    schema = config.attributes["database_schema"]
    script = ScriptDirectory.from_config(config)
    prepare_sqlite_file(settings.database)
    engine = create_engine(settings.database, poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(
                connection, opts={"version_table": VERSION_TABLE, "version_table_schema": schema}
            )
            heads = context.get_current_heads()
            if not heads:
                known = {revision.revision for revision in script.walk_revisions()}
                heads = tuple(legacy_revisions(connection, schema, known))
    finally:
        engine.dispose()
    return Status(revision=heads[0] if heads else None, head=script.get_current_head())


def history() -> list[Revision]:
    """Every revision, newest first."""
    script = ScriptDirectory(str(MIGRATIONS_DIR))
    head = script.get_current_head()
    return [
        Revision(item.revision, (item.doc or "").strip().split("\n")[0], item.revision == head)
        for item in script.walk_revisions()
    ]
