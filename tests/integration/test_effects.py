"""Exactly-once effects in real worker processes, and deterministic job ids for submit."""

from __future__ import annotations

import os
import signal
import threading
import uuid
from typing import Any

import redis

from conveyor.core import db, effects
from conveyor.core.jobs import Submission, submit
from conveyor.core.models import Job, TaskEffect
from tests.integration.conftest import Stack, wait_for

TASK = "tests.effects.counted"


def hot(stack: Stack) -> redis.Redis:
    return redis.Redis.from_url(stack.env["CONVEYOR_REDIS_URL"], decode_responses=True)


def counted(key: str, counter: str, **options: Any) -> str:
    job = submit(Submission(task_name=TASK, kwargs={"key": key, "counter": counter, **options}))
    return job.id


def stored_effect(key: str) -> TaskEffect | None:
    with db.session_scope() as session:
        return session.get(TaskEffect, key)


def test_same_effect_sent_twice_is_performed_once(stack: Stack) -> None:
    r = hot(stack)
    key, counter = f"fx-{uuid.uuid4()}", f"count-{uuid.uuid4()}"
    first = stack.wait_job(counted(key, counter), {"succeeded", "dead"})
    second = stack.wait_job(counted(key, counter), {"succeeded", "dead"})
    assert first["state"] == second["state"] == "succeeded"
    assert first["id"] != second["id"]
    assert r.get(counter) == "1"
    assert r.get(f"{counter}:entered") == "1"
    # The second job returns what the first recorded, not a result of its own.
    assert first["result"] == second["result"] == {"count": 1, "job_id": first["id"]}
    record = stored_effect(key)
    assert record is not None
    assert record.task_name == TASK
    assert record.job_id == first["id"]


def test_concurrent_runs_of_one_effect_perform_it_once(stack: Stack) -> None:
    r = hot(stack)
    key, counter = f"fx-{uuid.uuid4()}", f"count-{uuid.uuid4()}"
    # The worker has two processes: both jobs run at once; one holds the claim 1.5 s.
    job_ids = [counted(key, counter, hold_seconds=1.5) for _ in range(2)]
    jobs = [stack.wait_job(job_id, {"succeeded", "dead"}, timeout=60) for job_id in job_ids]
    assert [job["state"] for job in jobs] == ["succeeded", "succeeded"]
    assert r.get(counter) == "1"
    assert r.get(f"{counter}:entered") == "1"
    winner = jobs[0]["result"]["job_id"]
    assert winner in job_ids
    assert all(job["result"] == {"count": 1, "job_id": winner} for job in jobs)
    # The other job met the claim in progress, retried, and then found the result.
    loser = next(job for job in jobs if job["id"] != winner)
    assert loser["attempts"] >= 2


def test_a_failed_effect_is_performed_by_the_retry(stack: Stack) -> None:
    r = hot(stack)
    key, counter = f"fx-{uuid.uuid4()}", f"count-{uuid.uuid4()}"
    job = stack.wait_job(counted(key, counter, fail_attempts=1), {"succeeded", "dead"})
    assert job["state"] == "succeeded"
    assert job["attempts"] == 2
    assert r.get(f"{counter}:entered") == "2"  # the failed try entered, and the retry
    assert r.get(counter) == "1"
    assert job["result"] == {"count": 1, "job_id": job["id"]}


def test_a_worker_killed_mid_effect_redelivers_and_performs_it_once(stack: Stack) -> None:
    r = hot(stack)
    key, counter = f"fx-{uuid.uuid4()}", f"count-{uuid.uuid4()}"
    job_id = counted(key, counter, hold_seconds=4)
    pid = int(wait_for(lambda: r.get(f"{counter}:pid"), 30, "the effect to start"))
    worker = stack.worker.process
    assert worker is not None
    # Only a pool process of the worker this suite started.
    assert os.getpgid(pid) == worker.pid
    os.kill(pid, signal.SIGKILL)
    job = stack.wait_job(job_id, {"succeeded", "dead"}, timeout=60)
    assert job["state"] == "succeeded"
    assert job["attempts"] == 2
    # The killed run held the claim; the redelivery of the same job took it over at once.
    assert r.get(f"{counter}:entered") == "2"
    assert r.get(counter) == "1"
    record = stored_effect(key)
    assert record is not None
    assert record.result == {"value": {"count": 1, "job_id": job_id}}


def test_deterministic_job_id_submits_one_job(stack: Stack) -> None:
    r = hot(stack)
    key, counter = f"fx-{uuid.uuid4()}", f"count-{uuid.uuid4()}"
    job_id = effects.deterministic_job_id("tests.effects", key)
    submitted: list[str] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def race() -> None:
        barrier.wait()
        try:
            job = submit(
                Submission(task_name=TASK, kwargs={"key": key, "counter": counter}, job_id=job_id)
            )
            submitted.append(job.id)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=race) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert submitted == [job_id] * 8
    job = stack.wait_job(job_id, {"succeeded", "dead"})
    assert job["state"] == "succeeded"
    assert job["attempts"] == 1
    assert r.get(counter) == "1"
    # Submitting it again later returns the finished job; nothing new is queued.
    again = submit(
        Submission(task_name=TASK, kwargs={"key": key, "counter": counter}, job_id=job_id)
    )
    assert again.id == job_id
    assert again.state == "succeeded"
    with db.session_scope() as session:
        assert session.get(Job, job_id) is not None
