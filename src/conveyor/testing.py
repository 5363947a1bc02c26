"""Testing your tasks against a real worker: a pytest plugin, shipped with Conveyor.

In your `conftest.py`:

    pytest_plugins = ["conveyor.testing"]

Fixtures: `conveyor_settings` (override CONVEYOR_* settings for one test) and
`conveyor_worker` (a real `celery worker` process on your Redis and database, started once per
test session, with your CONVEYOR_TASK_MODULES). Helpers: `wait_for_job(job_id)` and
`drain(queue)`. There is no eager mode: your task runs the way it will in production, so
serialization, routing, retries and dead letters are all tested too.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from conveyor.core.db import session_scope
from conveyor.core.models import TERMINAL_STATES, Job
from conveyor.core.settings import get_settings, use_settings

__all__ = ["SettingsOverride", "Worker", "drain", "wait_for_job"]


def wait_for_job(job_id: str, *, timeout: float = 30.0, states: set[str] | None = None) -> Job:
    """The job once it reaches one of `states` (default: any final state), read from the
    ledger; an AssertionError saying where it got to if it does not within `timeout` s."""
    wanted = {str(state) for state in (states or TERMINAL_STATES)}
    deadline = time.monotonic() + timeout
    job: Job | None = None
    while True:
        with session_scope() as session:
            job = session.get(Job, job_id)
            if job is not None:
                session.expunge(job)
        if job is not None and str(job.state) in wanted:
            return job
        if time.monotonic() > deadline:
            where = "not in the ledger" if job is None else f"still {job.state}"
            raise AssertionError(
                f"job {job_id} did not reach {sorted(wanted)} within {timeout} s: {where}"
                + (f" (last error: {job.error_message})" if job and job.error_message else "")
            )
        time.sleep(0.05)


def drain(queue: str = "default", *, timeout: float = 30.0) -> int:
    """Wait until `queue` holds no message and none of its jobs is still queued, running or
    retrying; returns how many of its jobs the ledger holds in a final state."""
    from conveyor.core import brokers

    deadline = time.monotonic() + timeout
    while True:
        waiting = brokers.queue_depths([queue], get_settings())[queue]
        with session_scope() as session:
            open_jobs = session.scalar(
                select(func.count())
                .select_from(Job)
                .where(Job.queue == queue, Job.state.not_in(TERMINAL_STATES))
            )
            done = session.scalar(
                select(func.count())
                .select_from(Job)
                .where(Job.queue == queue, Job.state.in_(TERMINAL_STATES))
            )
        if waiting == 0 and not open_jobs:
            return int(done or 0)
        if time.monotonic() > deadline:
            raise AssertionError(
                f"queue {queue!r} did not drain within {timeout} s: {waiting} messages "
                f"waiting, {open_jobs} jobs not finished"
            )
        time.sleep(0.05)


@dataclass
class SettingsOverride:
    """Set CONVEYOR_* settings for one test; undone when it ends."""

    monkeypatch: pytest.MonkeyPatch

    def set(self, **values: Any) -> None:
        """`set(task_retry_max=2)` sets CONVEYOR_TASK_RETRY_MAX=2 in this process."""
        for name, value in values.items():
            self.monkeypatch.setenv(f"CONVEYOR_{name.upper()}", str(value))
        use_settings(None)
        # Raises now, naming the setting, if a value is not valid.
        get_settings()


@dataclass
class Worker:
    """A `celery worker` process running Conveyor's app with your task modules."""

    queues: list[str]
    cwd: Path
    log_path: Path
    name: str = field(default_factory=lambda: f"conveyor-test-{uuid.uuid4().hex[:8]}")
    process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> None:
        argv = [sys.executable, "-m", "celery", "-A", "conveyor.worker", "worker"]
        argv += ["-Q", ",".join(self.queues), "-n", f"{self.name}@{socket.gethostname()}"]
        argv += ["--concurrency", "1", "--loglevel", "INFO"]
        # Your task modules import from where pytest runs, as they do for `conveyor worker`.
        path = [str(self.cwd), *filter(None, [os.environ.get("PYTHONPATH")])]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                argv, cwd=self.cwd, env=env, stdout=log, stderr=subprocess.STDOUT
            )
        self._wait_until_ready(timeout)

    def _wait_until_ready(self, timeout: float) -> None:
        from conveyor.core.celery_app import get_celery

        deadline = time.monotonic() + timeout
        destination = [f"{self.name}@{socket.gethostname()}"]
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"the worker exited at start; its log:\n{self.log_tail()}")
            if get_celery().control.ping(destination=destination, timeout=0.5):
                return
        self.stop()
        raise RuntimeError(f"the worker did not answer within {timeout} s:\n{self.log_tail()}")

    def stop(self, timeout: float = 30.0) -> None:
        """A warm shutdown (SIGTERM: the running task finishes), then SIGKILL if it hangs."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)

    def restart(self) -> None:
        self.stop()
        self.start()

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture
def conveyor_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[SettingsOverride]:
    """Override settings for one test: `conveyor_settings.set(queues="billing")`. A worker
    already running keeps the settings it started with."""
    yield SettingsOverride(monkeypatch)
    use_settings(None)


@pytest.fixture(scope="session")
def conveyor_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    """A real worker for the whole session, consuming every declared queue, on the Redis and
    database your CONVEYOR_* settings name (or the `conveyor up` running here)."""
    from conveyor.core import workloads

    settings = get_settings()
    worker = Worker(
        queues=workloads.queues(settings),
        cwd=Path.cwd(),
        log_path=tmp_path_factory.mktemp("conveyor") / "worker.log",
    )
    worker.start()
    try:
        yield worker
    finally:
        worker.stop()
