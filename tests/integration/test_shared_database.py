"""Conveyor in the application's own database: beside the application's Alembic history in
either order, in a schema of its own, and the `conveyor db` commands."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from typer.testing import CliRunner

from conveyor.cli import app as cli
from conveyor.core import db, ledger
from conveyor.core.migrate import MIGRATIONS_DIR
from conveyor.core.settings import Settings, get_settings
from tests.integration.conftest import fresh_postgres_database

APP_ALEMBIC = Path(__file__).parent / "app_alembic"
APP_HEAD = "a1f3c9e27b10"
# Conveyor's head and the revision below it: each new revision moves them.
_SCRIPTS = ScriptDirectory(str(MIGRATIONS_DIR))
HEAD = str(_SCRIPTS.get_current_head())
BELOW_HEAD = str(_SCRIPTS.get_revision(HEAD).down_revision)
# Points CONVEYOR_DATABASE_URL (and other settings by name) at a database.
Point = Callable[..., Settings]


def app_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(APP_ALEMBIC))
    config.set_main_option("sqlalchemy.url", url.replace("postgresql://", "postgresql+psycopg://"))
    return config


def app_revision(url: str) -> str | None:
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with engine.connect() as connection:
            return connection.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
    finally:
        engine.dispose()


def tables(url: str, schema: str = "public") -> set[str]:
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        return set(sa.inspect(engine).get_table_names(schema=schema))
    finally:
        engine.dispose()


@pytest.fixture
def use(monkeypatch: pytest.MonkeyPatch) -> Iterator[Point]:
    """Point CONVEYOR_* at a database for the CLI, and forget it afterwards."""

    def point(url: str, **extra: str) -> Settings:
        for name in [n for n in os.environ if n.startswith("CONVEYOR_")]:
            monkeypatch.delenv(name)
        monkeypatch.setenv("CONVEYOR_DATABASE_URL", url)
        for name, value in extra.items():
            monkeypatch.setenv(f"CONVEYOR_{name.upper()}", value)
        get_settings.cache_clear()
        return get_settings()

    yield point
    get_settings.cache_clear()
    db.dispose_all()


def conveyor(*args: str, input: str | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args), input=input)
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize("app_first", [True, False], ids=["app-first", "conveyor-first"])
def test_both_histories_share_one_database(use: Point, app_first: bool) -> None:
    with fresh_postgres_database("conveyor_shared") as url:
        use(url)
        if app_first:
            command.upgrade(app_config(url), "head")
        assert conveyor("db", "upgrade")[0] == 0
        if not app_first:
            command.upgrade(app_config(url), "head")

        assert app_revision(url) == APP_HEAD
        assert conveyor("db", "current")[1] == f"{HEAD} (head)\n"
        assert {"users", "jobs", "alembic_version", "conveyor_jobs"} <= tables(url)

        code, _, _ = conveyor("db", "downgrade", "base", "--yes")

        assert code == 0
        assert tables(url) == {"users", "jobs", "alembic_version", "conveyor_alembic_version"}
        assert app_revision(url) == APP_HEAD
        command.downgrade(app_config(url), "base")  # the app's history is whole
        command.upgrade(app_config(url), "head")
        db.dispose_all()


def test_db_commands(use: Point, tmp_path: Path) -> None:
    use(f"sqlite:///{tmp_path / 'ledger.db'}")

    code, out, _ = conveyor("db", "current")
    assert (code, out) == (
        0,
        f"no Conveyor tables yet (head is {HEAD}: run `conveyor db upgrade`)\n",
    )
    code, _, err = conveyor("db", "upgrade", "0009")
    assert (code, err.strip()) == (0, "Conveyor's tables at 0009")
    code, out, _ = conveyor("db", "current", "--json")
    assert json.loads(out) == {"revision": "0009", "head": HEAD, "is_head": False}
    assert conveyor("db", "upgrade")[0] == 0
    assert conveyor("db", "current")[1] == f"{HEAD} (head)\n"

    history = conveyor("db", "history")[1].splitlines()
    assert history[0].startswith(f"{HEAD}  ")
    assert history[0].endswith("(head)")
    assert [line.split()[0] for line in history] == [f"{n:04d}" for n in range(int(HEAD), 0, -1)]

    code, _, _ = conveyor("db", "downgrade", "-1", input="n\n")
    assert code == 1  # refused: nothing dropped
    assert conveyor("db", "current")[1] == f"{HEAD} (head)\n"
    code, _, err = conveyor("db", "downgrade", "-1", "--yes")
    assert (code, err.strip()) == (0, f"Conveyor's tables at {BELOW_HEAD}")

    code, out, err = conveyor("db", "upgrade", "nope")
    assert code == 2
    assert err == (
        "conveyor: Can't locate revision identified by 'nope'; "
        "`conveyor db history` lists the revisions\n"
    )
    code, _, err = conveyor("db", "downgrade", "nope", "--yes")
    assert (code, len(err.splitlines())) == (2, 1)


def test_db_commands_say_in_one_line_what_is_wrong(use: Point, tmp_path: Path) -> None:
    use("postgresql://postgres@127.0.0.1:1/nowhere")
    code, _, err = conveyor("db", "current")
    assert code == 2
    assert err.startswith("conveyor: cannot connect to the database")
    assert err.rstrip().endswith("start the database or correct CONVEYOR_DATABASE_URL")
    assert len(err.splitlines()) == 1

    use(f"sqlite:///{tmp_path / 'ledger.db'}", database_schema="conveyor")
    code, _, err = conveyor("db", "upgrade")
    assert code == 2
    assert err.startswith("conveyor: CONVEYOR_DATABASE_SCHEMA is set but the database is SQLite")
    assert len(err.splitlines()) == 1


def test_a_schema_of_its_own(use: Point) -> None:
    with fresh_postgres_database("conveyor_schema") as url:
        command.upgrade(app_config(url), "head")
        settings = use(url, database_schema="conveyor")

        assert conveyor("db", "upgrade")[0] == 0

        assert tables(url) == {"users", "jobs", "alembic_version"}
        assert {"conveyor_jobs", "conveyor_alembic_version"} <= tables(url, "conveyor")
        assert conveyor("db", "current")[1] == f"{HEAD} (head)\n"
        with db.session_scope(settings) as session:
            ledger.create_job(session, ledger.NewJob(id="job-s", name="t", queue="default"))
        with db.session_scope(settings) as session:
            job = ledger.get_job(session, "job-s")
            assert job is not None
            assert job.state == "queued"
        engine = sa.create_engine(settings.database)
        with engine.connect() as connection:
            found = connection.execute(sa.text("SELECT id FROM conveyor.conveyor_jobs")).scalars()
            assert found.all() == ["job-s"]
        engine.dispose()

        assert conveyor("db", "downgrade", "base", "--yes")[0] == 0
        assert tables(url, "conveyor") == {"conveyor_alembic_version"}
        assert tables(url) == {"users", "jobs", "alembic_version"}
        db.dispose_all()
