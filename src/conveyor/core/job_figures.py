"""Reading the per-minute job figures (job_stats.py writes them): counts per step for the
dashboard's charts, and wait and run percentiles from the merged histograms."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from conveyor.core.job_stats import BUCKETS, RUN_COLUMNS, WAIT_COLUMNS
from conveyor.core.operations_models import DURATION_BOUNDS, JOB_STATS, OUTCOME_COLUMNS


@dataclass(frozen=True)
class Point:
    """Outcomes counted in the step that starts at `at`."""

    at: datetime
    succeeded: int = 0
    failed: int = 0
    retried: int = 0
    dead: int = 0
    cancelled: int = 0


@dataclass(frozen=True)
class Latency:
    """Wait and run time of one queue's attempts, in seconds; None when nothing was seen."""

    count: int
    wait_p50: float | None
    wait_p95: float | None
    wait_mean: float | None
    run_p50: float | None
    run_p95: float | None
    run_mean: float | None


def _utc(moment: datetime) -> datetime:
    # SQLite gives back naive datetimes; everything stored here is UTC.
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _step_start(moment: datetime, step: int) -> datetime:
    minutes = int(moment.timestamp() // 60)
    return datetime.fromtimestamp((minutes - minutes % step) * 60, UTC)


def _steps(since: datetime, step_minutes: int, until: datetime | None) -> list[datetime]:
    """The starts of the clock-aligned steps at or after `since` and before `until` (now)."""
    if step_minutes < 1:
        raise ValueError("step_minutes must be at least 1")
    since, end = _utc(since), _utc(until or datetime.now(UTC))
    step = timedelta(minutes=step_minutes)
    first = _step_start(since, step_minutes)
    first = first if first == since else first + step
    starts: list[datetime] = []
    while first + len(starts) * step < end:
        starts.append(first + len(starts) * step)
    return starts


def series(
    session: Session,
    *,
    since: datetime,
    step_minutes: int,
    queue: str | None = None,
    until: datetime | None = None,
) -> list[Point]:
    """One point per step of `step_minutes` (aligned to the clock) starting at or after
    `since` and before `until` (now), empty steps as zeros: since an hour ago by 1 gives 60
    points, since a day ago by 15 gives 96."""
    starts = _steps(since, step_minutes, until)
    if not starts:
        return []
    step = timedelta(minutes=step_minutes)
    query: Select[Any] = select(
        JOB_STATS.c.minute, *[func.sum(JOB_STATS.c[name]) for name in OUTCOME_COLUMNS]
    ).where(JOB_STATS.c.minute >= starts[0], JOB_STATS.c.minute < starts[-1] + step)
    if queue is not None:
        query = query.where(JOB_STATS.c.queue == queue)
    sums = {start: dict.fromkeys(OUTCOME_COLUMNS, 0) for start in starts}
    for minute, *counts in session.execute(query.group_by(JOB_STATS.c.minute)):
        totals = sums[_step_start(_utc(minute), step_minutes)]
        for name, count in zip(OUTCOME_COLUMNS, counts, strict=True):
            totals[name] += int(count or 0)
    return [Point(at=start, **totals) for start, totals in sums.items()]


def quantile(buckets: Iterable[float], q: float) -> float | None:
    """The q-quantile of a histogram, interpolated within its bucket (as Prometheus does);
    the unbounded last bucket answers its lower bound."""
    counts = list(buckets)
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    seen = 0.0
    for index, count in enumerate(counts):
        if count and seen + count >= rank:
            lower = DURATION_BOUNDS[index - 1] if index else 0.0
            upper = DURATION_BOUNDS[index]
            if math.isinf(upper):
                return lower
            return lower + (upper - lower) * (rank - seen) / count
        seen += count
    return DURATION_BOUNDS[-2]


def latency(session: Session, *, since: datetime, queue: str | None = None) -> dict[str, Latency]:
    """Per queue, the percentiles of the merged histograms and the means of the sums."""
    sums = [func.sum(JOB_STATS.c[name]) for name in ("wait_sum", "run_sum")]
    query: Select[Any] = select(
        JOB_STATS.c.queue,
        *sums,
        *[func.sum(JOB_STATS.c[name]) for name in (*WAIT_COLUMNS, *RUN_COLUMNS)],
    ).where(JOB_STATS.c.minute >= _utc(since))
    if queue is not None:
        query = query.where(JOB_STATS.c.queue == queue)
    found: dict[str, Latency] = {}
    for name, wait_sum, run_sum, *counts in session.execute(query.group_by(JOB_STATS.c.queue)):
        waits = [int(count or 0) for count in counts[:BUCKETS]]
        runs = [int(count or 0) for count in counts[BUCKETS:]]
        found[name] = Latency(
            count=sum(runs),
            wait_p50=quantile(waits, 0.5),
            wait_p95=quantile(waits, 0.95),
            wait_mean=float(wait_sum or 0) / sum(waits) if sum(waits) else None,
            run_p50=quantile(runs, 0.5),
            run_p95=quantile(runs, 0.95),
            run_mean=float(run_sum or 0) / sum(runs) if sum(runs) else None,
        )
    return found


@dataclass(frozen=True)
class LatencyPoint:
    """Wait and run percentiles of the attempts seen in the step that starts at `at`."""

    at: datetime
    wait_p50: float | None
    wait_p95: float | None
    run_p50: float | None
    run_p95: float | None


def latency_series(
    session: Session,
    *,
    since: datetime,
    step_minutes: int,
    queue: str | None = None,
    until: datetime | None = None,
) -> list[LatencyPoint]:
    """Per step, as `series` steps: the percentiles of that step's merged histograms (None
    where nothing ran, so a chart leaves a gap rather than drawing a zero)."""
    starts = _steps(since, step_minutes, until)
    if not starts:
        return []
    step = timedelta(minutes=step_minutes)
    query: Select[Any] = select(
        JOB_STATS.c.minute, *[func.sum(JOB_STATS.c[name]) for name in (*WAIT_COLUMNS, *RUN_COLUMNS)]
    ).where(JOB_STATS.c.minute >= starts[0], JOB_STATS.c.minute < starts[-1] + step)
    if queue is not None:
        query = query.where(JOB_STATS.c.queue == queue)
    merged = {start: [0] * (2 * BUCKETS) for start in starts}
    for minute, *counts in session.execute(query.group_by(JOB_STATS.c.minute)):
        totals = merged[_step_start(_utc(minute), step_minutes)]
        for index, count in enumerate(counts):
            totals[index] += int(count or 0)
    return [
        LatencyPoint(
            at=start,
            wait_p50=quantile(counts[:BUCKETS], 0.5),
            wait_p95=quantile(counts[:BUCKETS], 0.95),
            run_p50=quantile(counts[BUCKETS:], 0.5),
            run_p95=quantile(counts[BUCKETS:], 0.95),
        )
        for start, counts in merged.items()
    ]
