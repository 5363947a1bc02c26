"""Shared formatting for CLI tables and their --json form."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated

import typer
from rich.console import Console

from conveyor.core.ledger import as_utc, iso
from conveyor.core.models import DeadLetter

AsJson = Annotated[
    bool,
    typer.Option(
        "--json", help="Print JSON instead: ids in full, times in ISO 8601 UTC, no colours."
    ),
]

STATE_STYLES = {
    "queued": "cyan",
    "started": "yellow",
    "retrying": "magenta",
    "succeeded": "green",
    "failed": "red",
    "dead": "bold red",
    "cancelled": "dim",
}


def when(value: datetime | None) -> str:
    stamp = as_utc(value)
    return stamp.strftime("%Y-%m-%d %H:%M:%S") if stamp else ""


def state(value: str) -> str:
    style = STATE_STYLES.get(value, "")
    return f"[{style}]{value}[/{style}]" if style else value


def progress(current: int, total: int | None) -> str:
    return f"{current}/{total}" if total else (str(current) if current else "")


def make_console(*, stderr: bool = False) -> Console:
    """A console; when output is piped, wide enough that ids and keys are never cut."""
    console = Console(stderr=stderr)
    if not console.is_terminal:
        console = Console(stderr=stderr, width=240)
    return console


def print_json(document: object) -> None:
    """Plain JSON on stdout and nothing else, so `| jq` always parses it."""
    typer.echo(json.dumps(document, indent=2, ensure_ascii=False))


def letter_json(letter: DeadLetter) -> dict[str, object]:
    """A dead letter as its table rows show it, with the error message uncut."""
    return {
        "id": letter.id,
        "task_name": letter.task_name,
        "reason": letter.reason,
        "error": {"type": letter.error_type, "message": letter.error_message},
        "attempts": letter.attempts,
        "failed_at": iso(letter.failed_at),
        "replayed_job_id": letter.replayed_job_id,
    }
