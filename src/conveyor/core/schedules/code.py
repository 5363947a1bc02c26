"""Code-defined schedules (Celery Beat's `beat_schedule`: Conveyor's housekeeping and the
workloads' entries) described like schedules as data, to list them read-only beside those."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from celery.schedules import crontab, schedule

ID_PREFIX = "code:"


def describe(name: str, entry: Mapping[str, Any], *, with_arguments: bool) -> dict[str, Any]:
    when = entry.get("schedule")
    cron: str | None = None
    every: int | None = None
    if isinstance(when, timedelta):
        every = int(when.total_seconds())
    elif isinstance(when, crontab):
        parts = ("minute", "hour", "day_of_month", "month_of_year", "day_of_week")
        cron = " ".join(str(getattr(when, f"_orig_{part}")) for part in parts)
    elif isinstance(when, schedule):
        every = int(when.seconds)
    elif isinstance(when, int | float):
        every = int(when)
    return {
        "id": ID_PREFIX + name,
        "source": "code",
        "owner": None,
        "name": name,
        "task": entry.get("task"),
        "args": list(entry.get("args") or ()) if with_arguments else None,
        "kwargs": dict(entry.get("kwargs") or {}) if with_arguments else None,
        "cron": cron,
        "timezone": "UTC",
        "every_seconds": every,
        "enabled": True,
        "overlap": None,
        "catch_up_seconds": None,
        "next_slot": None,
        "created_at": None,
        "updated_at": None,
    }


def entries(beat_schedule: Mapping[str, Any], *, with_arguments: bool) -> list[dict[str, Any]]:
    return [
        describe(name, entry, with_arguments=with_arguments)
        for name, entry in sorted(beat_schedule.items())
    ]
