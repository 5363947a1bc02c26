"""Templates: Jinja2 with autoescaping, and the filters the pages share."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape

from conveyor.core.ledger import as_utc


def ago(value: datetime | None, now: datetime | None = None) -> str:
    """'3 s ago', '5 min ago', '2 h ago', '4 d ago'."""
    if value is None:
        return "—"
    return f"{span((now or datetime.now(UTC)) - as_utc(value))} ago"  # type: ignore[operator]


def span(delta: Any) -> str:
    seconds = max(0.0, float(delta.total_seconds() if hasattr(delta, "total_seconds") else delta))
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 86_400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86_400:.1f} d"


def duration(seconds: float | None) -> str:
    """Latencies: '42 ms', '3.1 s', '2 min'."""
    if seconds is None:
        return "—"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    return span(seconds)


def stamp(value: datetime | None) -> str:
    shown = as_utc(value)
    return shown.strftime("%Y-%m-%d %H:%M:%S UTC") if shown else "—"


def size(value: int | None) -> str:
    if value is None:
        return "—"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value = value / 1024  # type: ignore[assignment]
    return str(value)


def pretty(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=str)


@lru_cache(maxsize=1)
def environment() -> Environment:
    env = Environment(
        loader=PackageLoader("conveyor.dashboard", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(ago=ago, duration=duration, stamp=stamp, size=size, pretty=pretty)
    return env


def render(template: str, context: dict[str, Any]) -> str:
    return environment().get_template(template).render(context)
