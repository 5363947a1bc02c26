"""Shared formatting for CLI tables."""

from __future__ import annotations

from datetime import datetime

from rich.console import Console

from conveyor.core.ledger import as_utc

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
