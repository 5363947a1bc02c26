"""A real worker adds its job figures to the ledger: outcomes and histograms, per queue."""

from __future__ import annotations

import time

import httpx
from sqlalchemy import func, select

from conveyor.core import db, job_stats
from conveyor.core.celery_app import queue_for
from conveyor.core.models import Job, JobState
from conveyor.core.operations_models import JOB_STATS, OUTCOME_COLUMNS
from conveyor.diagnostics.tasks import TASK_NAME
from tests.integration.conftest import Stack, submit_diagnostics, wait_for

# 3 that succeed, 1 that fails once and then succeeds, 1 permanent failure: 6 attempts.
EXPECTED = {"succeeded": 4, "failed": 2, "retried": 1, "dead": 1, "cancelled": 0}
ATTEMPTS = 6
# Longer than two flush intervals of the stack (CONVEYOR_STATS_FLUSH_SECONDS=1).
QUIET_SECONDS = 2.5


def totals(queue: str) -> dict[str, int]:
    """Outcome counts and histogram totals of every row of the queue."""
    columns = (*OUTCOME_COLUMNS, *job_stats.WAIT_COLUMNS, *job_stats.RUN_COLUMNS)
    sums = [func.coalesce(func.sum(JOB_STATS.c[name]), 0) for name in columns]
    with db.session_scope() as session:
        row = session.execute(select(*sums).where(JOB_STATS.c.queue == queue)).one()
    values = dict(zip(columns, (int(value) for value in row), strict=True))
    found = {name: values[name] for name in OUTCOME_COLUMNS}
    found["waits"] = sum(values[name] for name in job_stats.WAIT_COLUMNS)
    found["runs"] = sum(values[name] for name in job_stats.RUN_COLUMNS)
    return found


def running_jobs(queue: str) -> int:
    """Started or waiting to retry; not `queued`, which other tests' seeded rows may stay in
    (a queued job that is really in the queue starts, and changes the totals, soon enough)."""
    states = (JobState.STARTED, JobState.RETRYING)
    with db.session_scope() as session:
        query = select(func.count()).where(Job.queue == queue, Job.state.in_(states))
        return int(session.scalar(query) or 0)


class Settled:
    """The queue's figures once earlier tests' jobs are done and their figures written:
    no running job, and totals unchanged for QUIET_SECONDS."""

    def __init__(self, queue: str) -> None:
        self.queue = queue
        self.seen: dict[str, int] | None = None
        self.since = 0.0

    def __call__(self) -> dict[str, int] | None:
        now = time.monotonic()
        current = totals(self.queue) if running_jobs(self.queue) == 0 else None
        if current is None or current != self.seen:
            self.seen, self.since = current, now
            return None
        return current if now - self.since >= QUIET_SECONDS else None


def test_a_worker_adds_up_outcomes_and_histograms(stack: Stack, admin: httpx.Client) -> None:
    queue = queue_for(TASK_NAME)
    before: dict[str, int] = wait_for(Settled(queue), 120, f"queue {queue} to settle", 0.25)

    quick = {"steps": 1, "step_seconds": 0.01}
    jobs = [submit_diagnostics(admin, **quick) for _ in range(3)]
    jobs.append(submit_diagnostics(admin, **quick, fail_attempts=1, failure="transient"))
    dead = submit_diagnostics(admin, **quick, fail_attempts=1, failure="permanent")
    for job_id in jobs:
        stack.wait_job(job_id, {"succeeded"})
    stack.wait_job(dead, {"dead"})

    expected = {name: before[name] + count for name, count in EXPECTED.items()}
    expected["waits"] = before["waits"] + ATTEMPTS
    expected["runs"] = before["runs"] + ATTEMPTS

    def arrived() -> bool:
        return totals(queue) == expected

    try:
        wait_for(arrived, 30, f"the job figures of queue {queue}", 0.2)
    except AssertionError:
        print(stack.worker.log_tail())
        raise AssertionError(f"{totals(queue)} != {expected}") from None
