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
# How long an ending waits for the thread's write of the same job to end.
WRITE_WAIT_SECONDS = 5.0


class ProgressWriter:
    def __init__(self, write: Write, interval: Callable[[], float]) -> None:
        self._write = write
        self._interval = interval
        self._lock = threading.Condition()
        # job id -> (progress, when it is due)
        self._pending: dict[str, tuple[Progress, float]] = {}
        # job id -> the progress the thread is writing right now
        self._writing: dict[str, Progress] = {}
        self._thread: threading.Thread | None = None
        forget = weakref.WeakMethod(self._forget)
        os.register_at_fork(after_in_child=lambda: (method := forget()) and method())

    def report(self, job_id: str, progress: Progress) -> None:
        """Keep `progress` as the job's latest; written within the interval."""
        interval = self._interval()
        if interval > 0:
            with self._lock:
                if self._ensure_thread():
                    _, due = self._pending.get(job_id, (progress, time.monotonic() + interval))
                    self._pending[job_id] = (progress, due)
                    self._lock.notify_all()
                    return
        self._write(job_id, progress)

    def take(self, job_id: str) -> Progress | None:
        """The job's latest progress not surely written, which its caller writes (the job is
        ending). A write under way is waited for, so nothing about the job is told after."""
        with self._lock:
            writing = self._wait_written(job_id)
            entry = self._pending.pop(job_id, None)
        return entry[0] if entry else writing

    def flush(self, job_id: str) -> None:
        """Write the job's unwritten progress now: another write about it comes next."""
        progress = self.take(job_id)
        if progress is not None:
            self._write(job_id, progress)

    def _wait_written(self, job_id: str) -> Progress | None:
        """With the lock held: wait (a few seconds at most) for the thread's write of this
        job to end; the progress it was writing, which may not have landed."""
        writing = self._writing.get(job_id)
        deadline = time.monotonic() + WRITE_WAIT_SECONDS
        while job_id in self._writing and time.monotonic() < deadline:
            self._lock.wait(max(0.0, deadline - time.monotonic()))
        return writing

    def _forget(self) -> None:
        # A forked process (a pool process) inherits neither the thread nor its jobs.
        self._lock = threading.Condition()
        self._pending = {}
        self._writing = {}
        self._thread = None

    def _ensure_thread(self) -> bool:
        """With the lock held: the writing thread is running; False if it cannot be started
        (the caller writes at once)."""
        thread = self._thread
        if thread is not None and thread.is_alive():
            return True
        thread = threading.Thread(target=self._run, name="conveyor-progress", daemon=True)
        try:
            thread.start()
        except RuntimeError as exc:  # the interpreter is shutting down, or out of threads
            log.warning("progress written at once: no writer thread: %s", exc)
            return False
        self._thread = thread
        return True

    def _due(self) -> list[tuple[str, Progress]]:
        """Wait for the earliest due progress; take every one that is due."""
        with self._lock:
            while True:
                now = time.monotonic()
                due = [job_id for job_id, (_, when) in self._pending.items() if when <= now]
                if due:
                    taken = [(job_id, self._pending.pop(job_id)[0]) for job_id in due]
                    self._writing.update(taken)
                    return taken
                earliest = min((when for _, when in self._pending.values()), default=None)
                self._lock.wait(None if earliest is None else earliest - now)

    def _run(self) -> None:
        while self._thread in (None, threading.current_thread()):
            for job_id, progress in self._due():
                try:
                    self._write(job_id, progress)
                except Exception as exc:  # the database may be away: kept for the next try
                    log.warning("job %s: progress not written: %s", job_id, exc)
                    with self._lock:
                        retry_at = time.monotonic() + max(self._interval(), 0.1)
                        self._pending.setdefault(job_id, (progress, retry_at))
                finally:
                    with self._lock:
                        self._writing.pop(job_id, None)
                        self._lock.notify_all()
