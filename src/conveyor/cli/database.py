"""`conveyor db`: Conveyor's migrations, which keep to their own tables and version table."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, NoReturn

import typer
from alembic.util import CommandError

from conveyor.cli.render import AsJson, make_console, print_json
from conveyor.core import migrate
from conveyor.core.db import ledger_schema
from conveyor.core.preflight import require_database
from conveyor.core.redaction import safe_url
from conveyor.core.settings import Settings, SettingsError, get_settings

app = typer.Typer(help="Conveyor's tables: migrations up and down.", no_args_is_help=True)
err = make_console(stderr=True)


@contextmanager
def _reachable() -> Iterator[Settings]:
    """The settings, once the database answers; a user's mistake becomes one red line."""
    try:
        settings = get_settings()
        ledger_schema(settings)
    except SettingsError as exc:
        _fail(str(exc))
    try:
        require_database(settings)
    except SettingsError as exc:
        _fail(f"{exc}; start the database or correct CONVEYOR_DATABASE_URL")
    try:
        yield settings
    except CommandError as exc:
        first = str(exc).strip().splitlines()[0]
        _fail(f"{first}; `conveyor db history` lists the revisions")


def _report(settings: Settings) -> None:
    status = migrate.status(settings)
    err.print(f"[green]Conveyor's tables at {status.revision or 'base'}[/green]")


def _fail(message: str) -> NoReturn:
    err.print(f"[red]conveyor: {message}[/red]", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


@app.command("upgrade")
def upgrade(
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
) -> None:
    """Apply Conveyor's migrations up to REVISION (an older install's are carried over)."""
    with _reachable() as settings:
        migrate.upgrade(settings, revision)
    _report(settings)


# "-1" is a revision, not an option.
@app.command("downgrade", context_settings={"ignore_unknown_options": True})
def downgrade(
    revision: Annotated[
        str, typer.Argument(help="Target revision: an id, -1 for the one before, or base.")
    ],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Undo Conveyor's migrations down to REVISION; the tables they made are dropped."""
    with _reachable() as settings:
        if not yes:
            typer.confirm(
                f"Downgrade Conveyor's tables in {safe_url(settings.database)} to {revision}? "
                "Tables of later revisions are dropped with their data",
                abort=True,
            )
        migrate.downgrade(settings, revision)
    _report(settings)


@app.command("current")
def current(as_json: AsJson = False) -> None:
    """The applied revision, and whether it is the newest."""
    with _reachable() as settings:
        status = migrate.status(settings)
    if as_json:
        print_json({"revision": status.revision, "head": status.head, "is_head": status.is_head})
    elif status.is_head:
        typer.echo(f"{status.revision} (head)")
    else:
        applied = status.revision or "no Conveyor tables yet"
        typer.echo(f"{applied} (head is {status.head}: run `conveyor db upgrade`)")


@app.command("history")
def history() -> None:
    """Conveyor's revisions, newest first."""
    for revision in migrate.history():
        typer.echo(f"{revision.id}  {revision.title}{'  (head)' if revision.is_head else ''}")
