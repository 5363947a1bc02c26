"""Shared formatting for CLI tables."""

from __future__ import annotations

from datetime import datetime

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
