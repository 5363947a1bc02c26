"""`conveyor dead-letters`: list, show, replay, delete and purge."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table
from sqlalchemy.orm import Session

from conveyor.cli.render import AsJson, letter_json, make_console, print_json, when
from conveyor.cli.system import ledger_session, require_broker
from conveyor.core import dead_letters, jobs
from conveyor.core.cleanup import prune_dead_letters
from conveyor.core.models import DeadLetter
from conveyor.core.settings import get_settings

app = typer.Typer(help="Jobs that failed for good.", no_args_is_help=True)
console = make_console()


@app.command("list")
def list_letters(
    task: Annotated[
        str | None, typer.Option(metavar="TASK_NAME", help="Only this task name.")
    ] = None,
    limit: Annotated[
        int, typer.Option(min=1, max=1000, metavar="N", help="How many to show.")
    ] = 20,
    as_json: AsJson = False,
) -> None:
    """Newest first."""
    table = Table("id", "task", "reason", "error", "attempts", "failed", "replayed as")
    with ledger_session() as session:
        letters = dead_letters.list_letters(session, task_name=task, limit=limit)
        if as_json:
            print_json([letter_json(letter) for letter in letters])
            return
        for letter in letters:
            table.add_row(
                letter.id,
                letter.task_name,
                letter.reason,
                f"{letter.error_type}: {letter.error_message[:60]}",
                str(letter.attempts),
                when(letter.failed_at),
                letter.replayed_job_id or "",
            )
    console.print(table)


LetterId = Annotated[
    str,
    typer.Argument(
        metavar="ID",
        help=f"Dead letter id, or its first {dead_letters.MIN_PREFIX_CHARS}+ characters.",
    ),
]


def _get(session: Session, letter_id: str) -> DeadLetter:
    match = dead_letters.find_by_prefix(session, letter_id)
    if match.letter is not None:
        return match.letter
    if match.count > 1:
        console.print(
            f"[red]{letter_id} matches {match.count} dead letters; give more characters[/red]",
            highlight=False,
        )
    else:
        console.print(f"[red]no dead letter {letter_id}[/red]", highlight=False)
    raise typer.Exit(1)


@app.command("show")
def show(letter_id: LetterId) -> None:
    """The dead letter with its arguments (secrets masked) and traceback."""
    with ledger_session() as session:
        data = dead_letters.to_dict(_get(session, letter_id))
    traceback = data["error"].pop("traceback")
    console.print_json(json.dumps(data, default=str))
    if traceback:
        console.print(traceback, highlight=False)


@app.command("replay")
def replay(letter_id: LetterId) -> None:
    """Run the task again as a new job with the same arguments."""
    require_broker()
    with ledger_session() as session:
        job = jobs.replay(session, _get(session, letter_id))
    console.print(f"replayed as job {job.id}")


@app.command("delete")
def delete(letter_id: LetterId) -> None:
    """Delete one dead letter."""
    with ledger_session() as session:
        letter = _get(session, letter_id)
        full_id = letter.id
        dead_letters.delete_letter(session, letter)
    console.print(f"deleted {full_id}")


@app.command("purge")
def purge(
    older_than: Annotated[
        float | None,
        typer.Option(
            metavar="DAYS", help="Days; default CONVEYOR_DEAD_LETTER_RETENTION_DAYS.", min=0
        ),
    ] = None,
) -> None:
    """Delete dead letters older than N days, in batches."""
    settings = get_settings()
    days = settings.dead_letter_retention_days if older_than is None else older_than
    with ledger_session() as session:
        removed = prune_dead_letters(session, days, settings.cleanup_batch_size)
    console.print(f"purged {removed} dead letters older than {days:g} days")
