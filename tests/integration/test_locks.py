"""Locks on a real Redis, and non-overlapping jobs on real workers."""

from __future__ import annotations

import itertools
import json
import socket
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis
from sqlalchemy import select

from conveyor.core import db
from conveyor.core.celery_app import get_celery
from conveyor.core.jobs import Submission, submit
from conveyor.core.locks import LOCK_PREFIX, Lock
from conveyor.core.models import Job
from tests.integration.conftest import Process, Stack, wait_for

TASK = "tests.limits.overlap_probe"
PROBE_TTL = 6.0  # OverlapProbe.overlap_ttl


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(redis_url, decode_responses=True)
    yield connection
    connection.close()


def test_only_the_holder_releases_and_an_expired_lock_is_free(client: redis.Redis) -> None:
    name = f"t-{uuid.uuid4().hex[:8]}"
    first = Lock(name, ttl=0.3, client=client)
    second = Lock(name, ttl=0.3, client=client)
    assert first.acquire()
    assert not second.acquire()
    assert 0 < second.retry_after <= 0.3
    assert not second.release()  # not its token: the key stays
    assert first.holder() == first.token
    time.sleep(0.4)
    assert second.acquire(), "an expired lock must be free"
    assert not first.release(), "a late release must not free the new holder's lock"
    assert not first.extend()
    assert second.holder() == second.token
    assert second.release()
    assert client.exists(LOCK_PREFIX + name) == 0


def test_renewal_keeps_a_lock_past_its_ttl_and_ends_at_max_hold(client: redis.Redis) -> None:
    name = f"t-{uuid.uuid4().hex[:8]}"
    lock = Lock(name, ttl=0.5, client=client)
    assert lock.acquire()
    lock.start_renewing(max_hold=1.5)
    time.sleep(1.2)
    assert lock.holder() == lock.token, "renewal should keep the lock past its ttl"
    # Past max_hold renewal stops, so even a holder that never ends frees the key.
    wait_for(lambda: lock.holder() is None, 2.0, "the lock to expire after max_hold")
    lock.stop_renewing()
    with Lock(name, ttl=1, client=client, wait=0.5) as again:
        assert again.holder() == again.token


def _probe(group: str, seconds: float) -> str:
    return submit(Submission(task_name=TASK, kwargs={"group": group, "seconds": seconds})).id


def _intervals(stack: Stack, group: str) -> list[dict[str, Any]]:
    client = redis.Redis.from_url(stack.env["CONVEYOR_REDIS_URL"])
    return [json.loads(item) for item in client.lrange(f"test:limits:intervals:{group}", 0, -1)]


def _row(job_id: str) -> Job:
    with db.session_scope() as session:
        job = session.scalars(select(Job).where(Job.id == job_id)).one()
    return job


def test_jobs_with_one_overlap_key_never_overlap(stack: Stack) -> None:
    group, other = f"g-{uuid.uuid4().hex[:8]}", f"g-{uuid.uuid4().hex[:8]}"
    same = [_probe(group, 0.4) for _ in range(4)]
    different = [_probe(other, 0.4) for _ in range(2)]

    def someone_waits() -> bool:
        rows = [_row(job_id) for job_id in same]
        return any(
            row.state == "queued"
            and (row.progress_message or "").startswith(f"waiting for lock probe:{group}")
            for row in rows
        )

    wait_for(someone_waits, 10, "a job to show that it waits for the lock", interval=0.05)
    for job_id in [*same, *different]:
        job = stack.wait_job(job_id, {"succeeded", "dead"}, timeout=60)
        assert job["state"] == "succeeded"
        assert job["attempts"] == 1, "waiting must not use an attempt"
        assert job["progress"]["message"] is None, "the wait message ends when the job runs"

    runs = sorted(_intervals(stack, group), key=lambda run: run["start"])
    assert len(runs) == 4
    for earlier, later in itertools.pairwise(runs):
        assert earlier["end"] <= later["start"], f"overlap: {earlier} and {later}"
    assert all(run["retries"] == 0 for run in runs)
    # The lock is per key: a job of another key ran while this key was held.
    others = _intervals(stack, other)
    assert any(
        mine["start"] < theirs["end"] and theirs["start"] < mine["end"]
        for mine in runs
        for theirs in others
    ), "jobs of different keys should run side by side"


def start_worker_process(stack: Stack, queues: str, concurrency: int = 2) -> Process:
    """Another worker like the stack's, on its own queues; stopped by the caller."""
    node = f"extra-{uuid.uuid4().hex[:8]}@{socket.gethostname()}"
    worker = Process(
        f"worker {node}",
        [
            sys.executable, "-m", "celery", "-A", "conveyor.worker", "worker",
            "-Q", queues, "-c", str(concurrency), "-n", node,
            "--without-gossip", "--without-mingle", "--loglevel", "INFO",
        ],
        stack.env,
        stack.tmp / f"{node.split('@')[0]}.log",
    )  # fmt: skip
    worker.start()

    def answers() -> bool:
        return bool(get_celery().control.ping(destination=[node], timeout=0.5))

    try:
        wait_for(answers, 30, f"worker {node} to answer a ping", interval=0.5)
    except AssertionError:
        worker.stop()
        raise
    return worker


@pytest.mark.one_database  # the lock lives in Redis
def test_a_killed_holder_frees_the_key_when_its_lock_expires(
    stack: Stack, admin: httpx.Client
) -> None:
    group = f"g-{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(stack.env["CONVEYOR_REDIS_URL"], decode_responses=True)
    lock_key = f"{LOCK_PREFIX}probe:{group}"
    # The holder runs on a worker of its own (queue "reports"), so killing it leaves the
    # stack's worker, and the waiter it holds, alive.
    stack.worker.stop()
    extra = start_worker_process(stack, "reports")
    holder = ""
    try:
        holder = submit(
            Submission(task_name=TASK, kwargs={"group": group, "seconds": 20}, queue="reports")
        ).id
        wait_for(lambda: client.exists(f"test:limits:started:{holder}"), 20, "the holder")
        held_since = time.time()
        stack.start_worker()
        waiter = _probe(group, 0)
        wait_for(
            lambda: (_row(waiter).progress_message or "").startswith("waiting for lock"),
            10,
            "the second job to wait for the lock",
        )
        # Held longer than its ttl: only renewal keeps it.
        time.sleep(max(0.0, held_since + PROBE_TTL + 1 - time.time()))
        assert client.get(lock_key), "the running holder should still hold its lock"
        extra.kill_hard()
        expires_at = time.time() + client.pttl(lock_key) / 1000
        assert expires_at - time.time() <= PROBE_TTL
        assert _row(waiter).state == "queued", "the waiter must not run while the lock exists"

        job = stack.wait_job(waiter, {"succeeded", "dead"}, timeout=30)
        assert job["state"] == "succeeded"
        assert job["attempts"] == 1
        started = float(client.get(f"test:limits:started:{waiter}") or 0)
        # It checks every ~0.25 s (OverlapProbe.overlap_wait): it ran soon after the expiry.
        assert expires_at - 0.1 <= started <= expires_at + 2, (expires_at, started)
    finally:
        extra.stop()
        if holder:
            # The killed holder comes back after the visibility timeout; it has done its part.
            admin.delete(f"/api/v1/jobs/{holder}")
