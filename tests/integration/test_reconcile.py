"""The reconciler heals what the broker lost, against a real worker, Redis and database."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from contextlib import suppress
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from sqlalchemy import update

from conveyor.core import ledger, reconcile
from conveyor.core.celery_app import get_celery
from conveyor.core.db import session_scope
from conveyor.core.jobs import Submission, submit
from conveyor.core.models import Job, JobState, utcnow
from conveyor.core.settings import get_settings
from conveyor.diagnostics.tasks import TASK_NAME
from tests.integration.conftest import Stack, submit_diagnostics, wait_for

# Heartbeats every second, a worker silent for 3 s is gone, a job untouched for 2 s is stale;
# the visibility timeout stays far longer, so only the reconciler can explain a quick return.
FAST = {
    "CONVEYOR_WORKER_HEARTBEAT_SECONDS": "1",
    "CONVEYOR_WORKER_LOST_AFTER_SECONDS": "3",
    "CONVEYOR_RECONCILE_GRACE_SECONDS": "2",
    "CONVEYOR_VISIBILITY_TIMEOUT": "600",
}


@pytest.fixture
def fast(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """These settings for this process (the reconciler runs here) and for new workers."""
    for name, value in FAST.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    usual = stack.env
    stack.env = {**usual, **FAST}
    try:
        yield
    finally:
        stack.env = usual
        get_settings.cache_clear()


def broker() -> redis.Redis:
    return redis.Redis.from_url(get_settings().broker)


def age(job_id: str, seconds: float = 600) -> None:
    """Make the job look untouched for a while, as a lost one would after the grace."""
    with session_scope() as session:
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(updated_at=utcnow() - timedelta(seconds=seconds))
        )


def remove_from_queue(queue: str, job_id: str) -> None:
    client = broker()
    for raw in client.lrange(queue, 0, -1):
        if json.loads(raw)["headers"]["id"] == job_id:
            client.lrem(queue, 1, raw)
            return
    raise AssertionError(f"job {job_id} is not in queue {queue}")


def local_ports_to(root_pid: int, server: dict[str, Any]) -> set[int]:
    """The local ports of the TCP connections that a process and its children hold to the
    server, read from /proc (the test must not drop its own connections)."""
    pids = {root_pid}
    for path in Path("/proc").glob("[0-9]*/stat"):
        with suppress(OSError):
            if int(path.read_text().rsplit(")", 1)[1].split()[1]) == root_pid:
                pids.add(int(path.parent.name))
    inodes = set()
    for pid in pids:
        with suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with suppress(OSError):
                    target = os.readlink(fd)
                    if target.startswith("socket:["):
                        inodes.add(target[8:-1])
    ports = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, inode = fields[1], fields[2], fields[9]
        if inode in inodes and int(remote.split(":")[1], 16) == int(server["port"]):
            ports.add(int(local.split(":")[1], 16))
    return ports


# The dead worker's message comes back from Redis (restore_orphans); the ledger side of the
# reconciler (_stale_jobs, _settle) runs on both databases in the tests below.
@pytest.mark.one_database
def test_a_dead_workers_job_runs_again_in_seconds(
    stack: Stack, admin: httpx.Client, fast: None
) -> None:
    stack.worker.stop()
    doomed = stack.start_worker()
    job_id = submit_diagnostics(admin, steps=16, step_seconds=0.25)
    wait_for(lambda: admin.get(f"/api/v1/jobs/{job_id}").json()["state"] == "started", 30, "start")
    doomed.kill_hard()  # the machine is gone: no ack, no warm shutdown, no last heartbeat
    killed_at = time.monotonic()
    stack.start_worker()

    def healed() -> bool:
        reconcile.run_once()
        return bool(admin.get(f"/api/v1/jobs/{job_id}").json()["state"] == "succeeded")

    wait_for(healed, 60, "the reconciler to hand the job out again", interval=1)
    recovered = time.monotonic() - killed_at
    job = admin.get(f"/api/v1/jobs/{job_id}").json()
    assert job["attempts"] == 2
    assert job["result"] == {"steps": 16, "attempt": 1}
    # Far sooner than the 600 s visibility timeout: heartbeat silence (3 s) plus a run.
    assert recovered < 30, f"recovered after {recovered:.1f}s"


def test_a_started_job_whose_result_was_stored_is_settled_from_it(stack: Stack, fast: None) -> None:
    # The worker ran it and stored its result, then the ledger write failed; the message
    # was acknowledged, so nothing would ever come back for it.
    job_id = str(uuid.uuid4())
    with session_scope() as session:
        ledger.create_job(
            session,
            ledger.NewJob(
                id=job_id,
                name=TASK_NAME,
                queue="default",
                owner="ops",
                state=JobState.STARTED,
                republishable=True,
            ),
        )
    get_celery().backend.store_result(job_id, {"rows": 3}, "SUCCESS")
    age(job_id)
    assert reconcile.reconcile()["settled"] == 1
    with session_scope() as session:
        settled = session.get(Job, job_id)
        assert settled is not None
        assert (settled.state, settled.result) == ("succeeded", {"rows": 3})


def test_a_queued_job_whose_message_was_lost_is_published_again(
    stack: Stack, admin: httpx.Client, fast: None
) -> None:
    stack.worker.stop()
    try:
        job = submit(Submission(task_name=TASK_NAME, kwargs={"steps": 1}, owner="ops"))
        remove_from_queue("default", job.id)  # a Redis restart without persistence, say
        age(job.id)
        report = reconcile.reconcile()
        assert report.get("republished") == 1, report
        assert reconcile.reconcile().get("republished") is None  # the message is there again
    finally:
        stack.start_worker()
    done = stack.wait_job(job.id, {"succeeded", "dead"})
    assert (done["state"], done["attempts"]) == ("succeeded", 1)


def test_a_lost_job_out_of_attempts_is_a_dead_letter_with_the_reason(
    stack: Stack, admin: httpx.Client, fast: None
) -> None:
    stack.worker.stop()
    try:
        job = submit(Submission(task_name=TASK_NAME, kwargs={"steps": 1}, owner="ops"))
        remove_from_queue("default", job.id)
        with session_scope() as session:
            # It started as often as the task may run (5 retries after the first attempt).
            session.execute(update(Job).where(Job.id == job.id).values(state="started", attempts=6))
        age(job.id)
        assert reconcile.reconcile().get("dead_lettered") == 1
    finally:
        stack.start_worker()
    letters: list[dict[str, Any]] = admin.get("/api/v1/dead-letters?limit=200").json()["items"]
    letter = next(item for item in letters if item["job_id"] == job.id)
    assert letter["reason"] == "lost"
    assert "its message was lost after 6 attempt(s)" in letter["error"]["message"]
    assert letter["kwargs"] == {"steps": 1}  # the arguments as sent, ready to replay


def test_jobs_that_are_held_or_waiting_are_left_alone(
    stack: Stack, admin: httpx.Client, fast: None
) -> None:
    running = submit_diagnostics(admin, steps=20, step_seconds=0.2)
    waiting = submit(
        Submission(task_name=TASK_NAME, kwargs={"steps": 1}, owner="ops", countdown=30)
    )
    wait_for(lambda: admin.get(f"/api/v1/jobs/{running}").json()["state"] == "started", 30, "start")
    time.sleep(1.5)  # a heartbeat naming both has been written
    age(running)
    age(waiting.id)
    report = reconcile.reconcile()
    assert not {"republished", "dead_lettered", "settled", "restored"} & set(report), report
    assert stack.wait_job(running, {"succeeded"})["attempts"] == 1
    admin.delete(f"/api/v1/jobs/{waiting.id}")


def test_a_dropped_redis_connection_loses_no_running_job(stack: Stack, admin: httpx.Client) -> None:
    job_id = submit_diagnostics(admin, steps=12, step_seconds=0.25)
    wait_for(lambda: admin.get(f"/api/v1/jobs/{job_id}").json()["state"] == "started", 30, "start")
    # The worker's connections drop, as a proxy or a network blip would drop them.
    assert stack.worker.process is not None
    client = redis.Redis.from_url(get_settings().redis)
    ports = local_ports_to(stack.worker.process.pid, client.connection_pool.connection_kwargs)
    assert ports, "the worker holds no Redis connection"
    for port in ports:
        client.execute_command("CLIENT", "KILL", "ADDR", f"127.0.0.1:{port}")
    job = stack.wait_job(job_id, {"succeeded", "dead", "cancelled"}, timeout=60)
    assert job["state"] == "succeeded", job
