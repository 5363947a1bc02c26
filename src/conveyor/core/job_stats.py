"""Per-minute job figures per queue, counted in each worker process and added to the ledger.

Each process keeps its figures in memory and adds them to `conveyor_job_stats` every
CONVEYOR_STATS_FLUSH_SECONDS, one upsert per (minute, queue): no write per job, and the
dashboard reads at most minutes x queues rows, never the jobs table. A crash loses at most
the figures of that process's last flush interval; the jobs themselves are unaffected.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.base import ReadOnlyColumnCollection
from sqlalchemy.sql.elements import KeyedColumnElement

from conveyor.core import db
from conveyor.core.operations_models import DURATION_BOUNDS, JOB_STATS, OUTCOME_COLUMNS
from conveyor.core.settings import get_settings

log = logging.getLogger(__name__)

# Past this many unwritten minutes (the database down for an hour) the oldest are dropped.
MAX_PENDING_MINUTES = 60
BUCKETS = len(DURATION_BOUNDS)
WAIT_COLUMNS = tuple(f"wait_{index}" for index in range(BUCKETS))
RUN_COLUMNS = tuple(f"run_{index}" for index in range(BUCKETS))
VALUE_COLUMNS = (*OUTCOME_COLUMNS, "wait_sum", "run_sum", *WAIT_COLUMNS, *RUN_COLUMNS)
# An attempt that raised is counted as failed, and also as what became of it.
_COUNTED_AS = {"retried": ("failed", "retried"), "dead": ("failed", "dead")}


def bucket_of(seconds: float) -> int:
    """Index of the first bucket whose upper bound holds `seconds` (Prometheus' `le`)."""
    return bisect_left(DURATION_BOUNDS, max(0.0, seconds))


def minute_of(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, UTC).replace(second=0, microsecond=0)


@dataclass
class Figures:
    """What one queue did in one minute, in the units of the table's columns."""

    values: dict[str, float] = field(default_factory=lambda: dict.fromkeys(VALUE_COLUMNS, 0))

    def add(self, other: Figures) -> None:
        for name, value in other.values.items():
            self.values[name] += value


Key = tuple[datetime, str]


class StatsRecorder:
    """One process's figures not yet written, and the thread that writes them."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        autostart: bool = True,
        interval: Callable[[], float] | None = None,
    ) -> None:
        self._clock = clock
        self._autostart = autostart
        self._interval = interval or _flush_seconds
        self.reset_after_fork()

    def reset_after_fork(self) -> None:
        """Start empty: a forked child must not write its parent's figures a second time, and
        it has no flush thread (threads do not survive a fork) nor a usable lock."""
        self._lock = threading.Lock()
        self._pending: dict[Key, Figures] = {}
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._failing = False

    def pending(self) -> dict[Key, Figures]:
        with self._lock:
            return {key: Figures(dict(figures.values)) for key, figures in self._pending.items()}

    def observe_wait(self, queue: str, seconds: float) -> None:
        """An attempt started after `seconds` in its queue."""
        with self._lock:
            values = self._figures(queue).values
            values["wait_sum"] += max(0.0, seconds)
            values[WAIT_COLUMNS[bucket_of(seconds)]] += 1
        self._ensure_thread()

    def observe_outcome(self, queue: str, outcome: str, run_seconds: float | None) -> None:
        """An attempt ended: `retried` and `dead` also count as `failed`."""
        if outcome not in OUTCOME_COLUMNS:
            return
        with self._lock:
            values = self._figures(queue).values
            for name in _COUNTED_AS.get(outcome, (outcome,)):
                values[name] += 1
            if run_seconds is not None:
                values["run_sum"] += max(0.0, run_seconds)
                values[RUN_COLUMNS[bucket_of(run_seconds)]] += 1
        self._ensure_thread()

    def _figures(self, queue: str) -> Figures:
        key = (minute_of(self._clock()), queue)
        figures = self._pending.get(key)
        if figures is None:
            figures = self._pending[key] = Figures()
        return figures

    def flush(self, engine: Engine | None = None) -> int:
        """Add the pending figures to the table; the number of rows written. On failure the
        figures are kept for the next flush, and one warning is logged until one succeeds."""
        with self._lock:
            taken, self._pending = self._pending, {}
        if not taken:
            return 0
        try:
            write(engine or db.get_engine(), taken)
        except Exception as exc:  # the database may be down: never raise into a task
            self._give_back(taken)
            if not self._failing:
                log.warning("job figures not written, kept for the next try: %s", exc)
            self._failing = True
            return 0
        self._failing = False
        return len(taken)

    def _give_back(self, taken: dict[Key, Figures]) -> None:
        with self._lock:
            for key, figures in self._pending.items():
                taken.setdefault(key, Figures()).add(figures)
            minutes = sorted({minute for minute, _ in taken}, reverse=True)
            kept = set(minutes[:MAX_PENDING_MINUTES])
            self._pending = {key: value for key, value in taken.items() if key[0] in kept}

    def _ensure_thread(self) -> None:
        if not self._autostart or self._thread is not None:
            return
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(
                target=self._run, name="conveyor-job-stats", daemon=True
            )
        self._thread.start()

    @property
    def thread(self) -> threading.Thread | None:
        return self._thread

    def _run(self) -> None:
        me = threading.current_thread()
        # A thread the recorder forgot (reset) stops instead of writing its successor's figures.
        while not self._stop.wait(self._interval()) and self._thread is me:
            self.flush()

    def close(self, engine: Engine | None = None) -> None:
        """Stop the thread and write what is left: when the process exits."""
        self._stop.set()
        self.flush(engine)


def write(engine: Engine, figures: dict[Key, Figures]) -> None:
    """One upsert per (minute, queue) that adds to the row, in one transaction."""
    # The ledger is PostgreSQL or SQLite (the settings refuse any other URL); both dialects
    # spell the upsert the same way.
    dialect = postgresql if engine.dialect.name == "postgresql" else sqlite
    inserted = dialect.insert(JOB_STATS)
    statement = inserted.on_conflict_do_update(
        index_elements=[JOB_STATS.c.minute, JOB_STATS.c.queue],
        set_=_added(inserted.excluded),
    )
    rows = [
        {"minute": minute, "queue": queue, **values.values}
        for (minute, queue), values in figures.items()
    ]
    with engine.begin() as connection:
        connection.execute(statement, rows)


def _added(excluded: ReadOnlyColumnCollection[str, KeyedColumnElement[Any]]) -> dict[str, Any]:
    # col = table.col + excluded.col: every process's figures add up in the same row.
    return {name: JOB_STATS.c[name] + excluded[name] for name in VALUE_COLUMNS}


def _flush_seconds() -> float:
    return get_settings().stats_flush_seconds


# The recorder of this process; a forked child (a prefork pool process) starts a fresh one.
recorder = StatsRecorder()
os.register_at_fork(after_in_child=lambda: recorder.reset_after_fork())


def observe_wait(queue: str, seconds: float) -> None:
    recorder.observe_wait(queue, seconds)


def observe_outcome(queue: str, outcome: str, run_seconds: float | None) -> None:
    recorder.observe_outcome(queue, outcome, run_seconds)


def flush_at_exit(**_: Any) -> None:
    """Celery's worker_process_shutdown (pool children) and worker_shutdown (solo, threads)."""
    recorder.close()
