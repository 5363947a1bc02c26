"""Pausing and resuming queues against real workers, Redis and the ledger.

The queues here are the tests' own (`qa` gets the diagnostics jobs, `qb` nothing), declared
for an API process and workers started here, so the stack's worker never touches them.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
import redis
from sqlalchemy import delete

from conveyor.core import db, heartbeat
from conveyor.core.celery_app import get_celery
from conveyor.core.operations_models import PausedQueue
from conveyor.core.redis_client import worker_key
from tests.integration.conftest import Process, Stack, extra_api, submit_diagnostics, wait_for

OWN = {
    "CONVEYOR_QUEUES": "reports,qa=conveyor.diagnostics.*,qb",
    # Beats every second, so a missed broadcast heals within a second.
    "CONVEYOR_WORKER_HEARTBEAT_SECONDS": "1",
    "CONVEYOR_WORKER_LOST_AFTER_SECONDS": "5",
}
# How long a job must stay queued to count as held back, not merely slow to start.
HELD_FOR = 3.0


@pytest.fixture
def own_api(stack: Stack) -> Iterator[httpx.Client]:
    with extra_api(stack, "queues-api", **OWN) as base_url:
        headers = {"Authorization": f"Bearer {stack.admin_key}"}
        with httpx.Client(base_url=base_url, headers=headers, timeout=30) as client:
            yield client
        _unpause_all()


def _unpause_all() -> None:
    with db.session_scope() as session:
        session.execute(delete(PausedQueue).where(PausedQueue.queue.in_(["qa", "qb"])))


@contextmanager
def own_worker(stack: Stack, queues: str) -> Iterator[str]:
    """A worker on the tests' queues; yields its hostname."""
    node = f"pause-{uuid.uuid4().hex[:8]}@{socket.gethostname()}"
    worker = Process(
        f"worker {node}",
        [
            sys.executable, "-m", "celery", "-A", "conveyor.worker", "worker",
            "-Q", queues, "-c", "1", "-n", node,
            "--without-gossip", "--without-mingle", "--loglevel", "INFO",
        ],
        {**stack.env, **OWN},
        stack.tmp / f"{node.split('@')[0]}.log",
    )  # fmt: skip
    worker.start()
    try:
        wait_for(lambda: _beat_of(node), 30, f"worker {node} to beat", interval=0.2)
        yield node
    except BaseException:
        print(worker.log_tail())
        raise
    finally:
        worker.stop()


def _beat_of(node: str) -> dict[str, Any] | None:
    raw = _redis().get(worker_key(node))
    return json.loads(raw) if raw else None


def _redis() -> redis.Redis:
    from conveyor.core.redis_client import get_redis

    return get_redis()


def _consumed_by(node: str) -> list[str] | None:
    """What the worker's consumer consumes, asked of the worker itself."""
    replies = get_celery().control.inspect(destination=[node], timeout=1).active_queues() or {}
    if node not in replies:
        return None
    return sorted(queue["name"] for queue in replies[node])


def _until(predicate: Callable[[], Any], what: str, timeout: float = 20) -> Any:
    return wait_for(predicate, timeout, what, interval=0.2)


def _stays_queued(stack: Stack, job_id: str) -> None:
    deadline = time.monotonic() + HELD_FOR
    with stack.client() as client:
        while time.monotonic() < deadline:
            state = client.get(f"/api/v1/jobs/{job_id}").json()["state"]
            assert state == "queued", f"job {job_id} ran from a paused queue: {state}"
            time.sleep(0.2)


def _queue(client: httpx.Client, name: str) -> dict[str, Any]:
    response = client.get("/api/v1/queues")
    assert response.status_code == 200, response.text
    return next(item for item in response.json()["items"] if item["name"] == name)


@pytest.mark.both_brokers
def test_a_paused_queue_keeps_its_jobs_until_resumed(stack: Stack, own_api: httpx.Client) -> None:
    with own_worker(stack, "qa") as node:
        _until(lambda: _queue(own_api, "qa")["consumers"] == [node], "the worker to show")

        paused = own_api.post("/api/v1/queues/qa/pause")
        assert paused.status_code == 200, paused.text
        body = paused.json()
        assert body["name"] == "qa"
        assert body["paused"] is True
        assert body["paused_by"] == "ops"
        assert body["paused_at"].endswith("+00:00")
        # The broadcast reached the worker's loop: nothing can be fetched from now on.
        _until(lambda: _consumed_by(node) == [], "the worker to stop consuming qa")

        job_id = submit_diagnostics(own_api, steps=1, step_seconds=0)
        _stays_queued(stack, job_id)
        listed = _queue(own_api, "qa")
        assert listed["paused"] is True
        assert listed["depth"] == 1
        assert listed["oldest_waiting_at"] is not None
        assert listed["consumers"] == [], "the worker's beat says it does not consume qa"

        resumed = own_api.post("/api/v1/queues/qa/resume")
        assert resumed.status_code == 200, resumed.text
        assert resumed.json()["paused"] is False
        assert resumed.json()["paused_at"] is None
        assert stack.wait_job(job_id, {"succeeded"})["state"] == "succeeded"
        assert _consumed_by(node) == ["qa"]


@pytest.mark.one_database  # the pause itself is stored on both databases by the test above
def test_workers_started_while_paused_consume_nothing_until_resume(
    stack: Stack, own_api: httpx.Client
) -> None:
    for name in ("qa", "qb"):
        assert own_api.post(f"/api/v1/queues/{name}/pause").status_code == 200
    job_id = submit_diagnostics(own_api, steps=1, step_seconds=0)
    with own_worker(stack, "qa,qb") as both, own_worker(stack, "qb") as other:
        # Every queue of each worker is paused: they consume nothing at all, not every queue.
        assert _consumed_by(both) == []
        assert _consumed_by(other) == []
        beat = _beat_of(both)
        assert beat is not None
        assert beat["queues"] == ["qa", "qb"]
        assert beat["consuming"] == []
        assert beat["concurrency"] == 1
        assert beat["started_at"] <= beat["at"]
        assert beat["active"] == 0
        assert beat["rss_bytes"] > 10 * 1024 * 1024, "the main process and its pool child"
        _stays_queued(stack, job_id)

        assert own_api.post("/api/v1/queues/qa/resume").status_code == 200
        assert stack.wait_job(job_id, {"succeeded"})["state"] == "succeeded"
        assert _consumed_by(both) == ["qa"]
        # Two beats later the worker never given qa still does not consume it.
        seen = _beat_of(other)
        assert seen is not None
        _until(lambda: (_beat_of(other) or {}).get("at", 0) > seen["at"] + 1.5, "two beats")
        assert _consumed_by(other) == []
    stopped = {w["hostname"]: w for w in heartbeat.known_workers()}
    assert stopped[both]["status"] == "stopped"
    assert stopped[both]["stopped_at"] >= stopped[both]["at"]


@pytest.mark.one_database
def test_a_missed_broadcast_heals_within_a_heartbeat(stack: Stack, own_api: httpx.Client) -> None:
    with own_worker(stack, "qa") as node:
        _until(lambda: _consumed_by(node) == ["qa"], "the worker to consume qa")
        # Paused in the ledger only, as if the broadcast had been lost.
        with db.session_scope() as session:
            session.add(PausedQueue(queue="qa", paused_by="test"))
        _until(lambda: _consumed_by(node) == [], "the worker to stop at its next beat", 10)
        _unpause_all()
        _until(lambda: _consumed_by(node) == ["qa"], "the worker to resume at its next beat", 10)


def _conveyor(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from conveyor.cli import main; main()", *args],
        env={**stack.env, **OWN},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.one_database  # the CLI calls the same core functions as the API
def test_queues_from_the_cli(stack: Stack, own_api: httpx.Client) -> None:
    paused = _conveyor(stack, "queues", "pause", "qb")
    assert paused.returncode == 0, paused.stdout + paused.stderr
    assert "paused qb" in paused.stdout
    again = _conveyor(stack, "queues", "pause", "qb")
    assert "already paused" in again.stdout

    listed = _conveyor(stack, "queues", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = {row["name"]: row for row in json.loads(listed.stdout)}
    assert rows["qb"]["paused"] is True
    assert rows["qb"]["paused_by"].startswith("cli")
    assert rows["qa"]["paused"] is False
    table = _conveyor(stack, "queues", "list")
    assert "qb" in table.stdout
    assert "paused" in table.stdout

    resumed = _conveyor(stack, "queues", "resume", "qb")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resumed qb" in resumed.stdout
    assert _queue(own_api, "qb")["paused"] is False

    unknown = _conveyor(stack, "queues", "pause", "nope")
    assert unknown.returncode == 1
    assert "CONVEYOR_QUEUES" in unknown.stderr
    assert "Traceback" not in unknown.stderr
    assert len(unknown.stderr.strip().splitlines()) == 1


def test_only_admins_manage_queues_and_unknown_ones_are_404(
    stack: Stack, admin: httpx.Client
) -> None:
    with stack.client(stack.key_for("queues-plain")) as plain:
        assert plain.get("/api/v1/queues").status_code == 403
        assert plain.post("/api/v1/queues/default/pause").status_code == 403
        assert plain.post("/api/v1/queues/default/resume").status_code == 403
    assert _queue(admin, "default")["paused"] is False, "a refused pause stores nothing"
    for action in ("pause", "resume"):
        missing = admin.post(f"/api/v1/queues/nope/{action}")
        assert missing.status_code == 404
        assert "CONVEYOR_QUEUES" in missing.json()["detail"]
