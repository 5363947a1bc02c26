"""Unique jobs: many concurrent dispatches of one key give one job and one run."""

from __future__ import annotations

import multiprocessing
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.synchronize import Barrier as ProcessBarrier
from typing import Any

import httpx
import pytest
import redis
from sqlalchemy import select

from conveyor.core import db
from conveyor.core.jobs import Submission, submit
from conveyor.core.models import Job
from tests.integration.conftest import Stack, wait_for

TASK = "tests.limits.unique_probe"
PROCESSES = 5
THREADS_PER_PROCESS = 5
THREADS_HERE = 25  # 5 x 5 in other processes + 25 here = 50 dispatches


def _warm_up() -> None:
    # Connections and imports first, so the dispatches themselves race.
    from conveyor.core.celery_app import get_celery
    from conveyor.core.redis_client import get_redis

    get_celery()
    get_redis().ping()
    with db.session_scope() as session:
        session.execute(select(1))


def _dispatch_burst(name: str, threads: int, start: threading.Barrier) -> list[str]:
    def one(_: int) -> str:
        start.wait(timeout=60)
        return submit(Submission(task_name=TASK, kwargs={"name": name, "seconds": 1.5})).id

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(one, range(threads)))


def _dispatch_from_process(
    name: str, barrier: ProcessBarrier, results: multiprocessing.Queue[list[str]]
) -> None:
    _warm_up()
    start = threading.Barrier(THREADS_PER_PROCESS, action=lambda: barrier.wait(timeout=60))
    results.put(_dispatch_burst(name, THREADS_PER_PROCESS, start))


def _jobs_for(name: str) -> list[Job]:
    with db.session_scope() as session:
        rows = session.scalars(select(Job).where(Job.name == TASK)).all()
    return [row for row in rows if row.kwargs.get("name") == name]


def _runs(stack: Stack, name: str) -> int:
    client = redis.Redis.from_url(stack.env["CONVEYOR_REDIS_URL"])
    return int(client.get(f"test:limits:runs:{name}") or 0)


@pytest.mark.both_brokers
def test_fifty_concurrent_dispatches_make_one_job_and_one_run(stack: Stack) -> None:
    name = f"u-{uuid.uuid4().hex[:8]}"
    context = multiprocessing.get_context("spawn")
    # Every thread in every process is released at once: the processes' first threads
    # meet at the process barrier with this process's first thread.
    barrier = context.Barrier(PROCESSES + 1)
    results: multiprocessing.Queue[list[str]] = context.Queue()
    children = [
        context.Process(target=_dispatch_from_process, args=(name, barrier, results))
        for _ in range(PROCESSES)
    ]
    for child in children:
        child.start()
    _warm_up()
    start = threading.Barrier(THREADS_HERE, action=lambda: barrier.wait(timeout=60))
    ids = _dispatch_burst(name, THREADS_HERE, start)
    for _ in children:
        ids.extend(results.get(timeout=60))
    for child in children:
        child.join(timeout=30)
        assert child.exitcode == 0

    assert len(ids) == PROCESSES * THREADS_PER_PROCESS + THREADS_HERE
    assert len(set(ids)) == 1, f"{len(set(ids))} different jobs"
    assert [job.id for job in _jobs_for(name)] == [ids[0]]
    job = stack.wait_job(ids[0], {"succeeded", "dead"})
    assert job["state"] == "succeeded"
    assert job["attempts"] == 1
    assert _runs(stack, name) == 1

    # Finished: the key is free again, and the next dispatch is a new job.
    again = submit(Submission(task_name=TASK, kwargs={"name": name, "seconds": 0}))
    assert again.id != ids[0]
    stack.wait_job(again.id, {"succeeded"})
    assert _runs(stack, name) == 2


@pytest.mark.both_brokers
def test_cancelled_and_dead_jobs_free_their_key(stack: Stack, admin: httpx.Client) -> None:
    name = f"u-{uuid.uuid4().hex[:8]}"
    queued = submit(Submission(task_name=TASK, kwargs={"name": name}, countdown=60))
    assert submit(Submission(task_name=TASK, kwargs={"name": name})).id == queued.id
    assert admin.delete(f"/api/v1/jobs/{queued.id}").status_code == 200
    replacement = submit(Submission(task_name=TASK, kwargs={"name": name, "seconds": 0}))
    assert replacement.id != queued.id
    stack.wait_job(replacement.id, {"succeeded"})

    # A caller-given key on a task that has none of its own; dead is final too.
    failing = Submission(
        task_name="conveyor.diagnostics.run",
        kwargs={"steps": 1, "step_seconds": 0.3, "fail_attempts": 1, "failure": "permanent"},
        unique_key=name,
        unique_for=60,
    )
    first = submit(failing)
    assert submit(failing).id == first.id
    stack.wait_job(first.id, {"dead"})
    assert submit(failing).id != first.id


def test_unique_keys_are_per_owner(stack: Stack) -> None:
    name = f"u-{uuid.uuid4().hex[:8]}"

    def dispatch(owner: str) -> Any:
        return submit(
            Submission(task_name=TASK, kwargs={"name": name, "seconds": 0.5}, owner=owner)
        )

    alice, bob = dispatch("alice"), dispatch("bob")
    assert alice.id != bob.id
    assert dispatch("alice").id == alice.id
    for job_id in (alice.id, bob.id):
        stack.wait_job(job_id, {"succeeded"})
    wait_for(lambda: _runs(stack, name) == 2, 10, "both owners' jobs to run")
