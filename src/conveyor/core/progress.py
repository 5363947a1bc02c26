"""A running job's progress, written behind it: the job never waits for the database.

`report` keeps a job's latest progress and returns at once. A thread of the process writes
it at most `CONVEYOR_PROGRESS_INTERVAL` seconds later, and at most once per interval per job:
a job that reports on every item of a long list writes a few rows, not one per item.

A job's ending takes its unwritten progress into the ending's own statement (`take`); any
other write about the job (a wait, a retry, a failure, a cancel) writes it first (`flush`), so
the ledger's last word on a job is never an older progress. The progress statement only
matches a job still `started`, so a late write can never touch an ended one.

What a crash can lose: the progress of the last interval, when the worker process dies with
it unwritten; the job itself is unaffected (docs/operations.md).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Progress:
    current: int
    total: int | None
    message: str | None


# write(job_id, progress): the statement, and telling whoever watches.
Write = Callable[[str, Progress], None]


class ProgressWriter:
    def __init__(self, write: Write, interval: Callable[[], float]) -> None:
        self._write = write
        self._interval = interval
        self._lock = threading.Condition()
        # job id -> (progress, when it is due)
        self._pending: dict[str, tuple[Progress, float]] = {}
        self._thread: threading.Thread | None = None
        forget = weakref.WeakMethod(self._forget)
        os.register_at_fork(after_in_child=lambda: (method := forget()) and method())

    def report(self, job_id: str, progress: Progress) -> None:
        """Keep `progress` as the job's latest; written within the interval."""
        interval = self._interval()
        if interval <= 0:
            self._write(job_id, progress)
            return
        with self._lock:
            _, due = self._pending.get(job_id, (progress, time.monotonic() + interval))
            self._pending[job_id] = (progress, due)
            self._ensure_thread()
            self._lock.notify()

    def take(self, job_id: str) -> Progress | None:
        """The job's unwritten progress, which its caller writes (the job is ending)."""
        with self._lock:
            entry = self._pending.pop(job_id, None)
        return entry[0] if entry else None

    def flush(self, job_id: str) -> None:
        """Write the job's unwritten progress now: another write about it comes next."""
        progress = self.take(job_id)
        if progress is not None:
            self._write(job_id, progress)

    def _forget(self) -> None:
        # A forked process (a pool process) inherits neither the thread nor its jobs.
        self._lock = threading.Condition()
        self._pending = {}
        self._thread = None

    def _ensure_thread(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="conveyor-progress", daemon=True)
        self._thread.start()

    def _due(self) -> list[tuple[str, Progress]]:
        """Wait for the earliest due progress; take every one that is due."""
        with self._lock:
            while True:
                now = time.monotonic()
                due = [job_id for job_id, (_, when) in self._pending.items() if when <= now]
                if due:
                    return [(job_id, self._pending.pop(job_id)[0]) for job_id in due]
                earliest = min((when for _, when in self._pending.values()), default=None)
                self._lock.wait(None if earliest is None else earliest - now)

    def _run(self) -> None:
        me = threading.current_thread()
        while self._thread is me:
            for job_id, progress in self._due():
                try:
                    self._write(job_id, progress)
                except Exception as exc:  # the database may be away: the next report retries
                    log.warning("job %s: progress not written: %s", job_id, exc)
