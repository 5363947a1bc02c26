"""`conveyor`: run the system and operate it."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from kombu.exceptions import OperationalError as KombuOperationalError
from redis.exceptions import RedisError
from rich.console import Console
from rich.markup import escape
from sqlalchemy.exc import OperationalError

from conveyor import __version__
from conveyor.cli import (
    cleanup,
    dead_letters,
    flower,
    jobs,
    keys,
    queues,
    run,
    schedules,
    settings,
    status,
    up,
)
from conveyor.core.redaction import safe_url
from conveyor.core.settings import SettingsError, get_settings

app = typer.Typer(
    help="Conveyor: production-grade background jobs for FastAPI, on Celery and Redis.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.command()(up.up)
app.command()(run.api)
app.command()(run.worker)
app.command()(run.beat)
app.command()(schedules.scheduler)
app.command()(status.status)
app.command()(cleanup.cleanup)
app.command()(settings.settings)
app.command()(flower.flower)
app.add_typer(run.db_app, name="db")
app.add_typer(keys.app, name="keys")
app.add_typer(jobs.app, name="jobs")
app.add_typer(dead_letters.app, name="dead-letters")
app.add_typer(schedules.app, name="schedules")
app.add_typer(queues.app, name="queues")

VERSION_FLAGS = ("--version", "-V")


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"conveyor {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option(
            *VERSION_FLAGS,
            is_eager=True,
            callback=_print_version,
            help="Print the version and exit.",
        ),
    ] = False,
) -> None:
    pass


def main() -> None:
    err = Console(stderr=True)
    try:
        # The version must print even where the configuration is broken.
        if not set(sys.argv[1:2]) & set(VERSION_FLAGS):
            get_settings()
        app()
    except SettingsError as exc:
        # Escaped: `pip install 'conveyor[email]'` is not markup.
        err.print(f"[red]conveyor: {escape(str(exc))}[/red]", highlight=False, soft_wrap=True)
        sys.exit(2)
    except (KombuOperationalError, RedisError) as exc:
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        err.print(
            f"[red]conveyor: cannot reach Redis: {first}[/red]", highlight=False, soft_wrap=True
        )
        sys.exit(2)
    except OperationalError as exc:
        first = str(exc.orig or exc).strip().splitlines()[0]
        if _missing_table(first):
            hint = "; run `conveyor db upgrade` to create the tables"
        else:
            hint = f" (CONVEYOR_DATABASE_URL={safe_url(get_settings().database)})"
        err.print(
            f"[red]conveyor: database error: {first}{hint}[/red]", highlight=False, soft_wrap=True
        )
        sys.exit(2)


def _missing_table(message: str) -> bool:
    return "no such table" in message or ("relation" in message and "does not exist" in message)
