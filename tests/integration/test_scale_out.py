"""Scale-out: workers on two hosts share one queue, and a host lost mid-batch loses no job.

Each worker is a host of its own: its own network namespace, reached only over a veth pair
and a relay to Redis and PostgreSQL on the root namespace's loopback (tests/integration/netns.py),
and its own host name, which its node name carries. The API submits from the root namespace.
Host A is killed (SIGKILL to its main process and pool children) while it runs jobs: every job
of the batch must still succeed, A's running jobs on host B, and none may run to success twice.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
import redis

from tests.integration.conftest import (
    QUICK_REDELIVERY,
    TEST_ENV,
    Process,
    api_answers,
    api_process,
    fresh_postgres_database,
    wait_for,
)
from tests.integration.netns import Host, Relay, isolation_unavailable, private_hosts, relay

pytestmark = pytest.mark.integration

VENV_BIN = Path(sys.executable).parent
BATCH = 24
STEPS, STEP_SECONDS = 6, 0.25  # 1.5 s a job: long enough to be caught running
TASK = "conveyor.diagnostics.run"
# The command line deploy/systemd and deploy/supervisor run; %h is the host's own name.
WORKER_ARGV = [
    str(VENV_BIN / "celery"), "-A", "conveyor.worker", "worker",
    "-Q", "default", "-c", "2", "-n", "worker@%h", "--loglevel", "INFO",
]  # fmt: skip
FINAL = {"succeeded", "failed", "dead", "cancelled"}


@pytest.fixture
def hosts() -> Iterator[list[Host]]:
    reason = isolation_unavailable()
    if reason is not None:
        pytest.skip(reason)
    with private_hosts(["host-a", "host-b"]) as made:
        yield made


def _env(data_dir: Path, database_url: str, redis_url: str) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("CONVEYOR_") and key != "PROMETHEUS_MULTIPROC_DIR"
    }
    env.update(TEST_ENV)
    # The workers run the venv's `celery`, which cannot import the tests' own task module.
    env.pop("CONVEYOR_TASK_MODULES", None)
    # A killed host's messages come back after 10 s, not 30 s.
    env.update(QUICK_REDELIVERY)
    env["CONVEYOR_DATA_DIR"] = str(data_dir)
    env["CONVEYOR_DATABASE_URL"] = database_url
    env["CONVEYOR_REDIS_URL"] = redis_url
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def _through(relays: Relay, host: Host, url: str) -> str:
    """The URL as the host reaches it: through a relay on its veth's root end."""
    parts = urlsplit(url)
    assert parts.hostname is not None, url
    assert parts.port is not None, url
    port = relays.forward(host.gateway, (parts.hostname, parts.port))
    user = f"{parts.netloc.rsplit('@', 1)[0]}@" if "@" in parts.netloc else ""
    return urlunsplit(parts._replace(netloc=f"{user}{host.gateway}:{port}"))


def _conveyor(args: list[str], env: dict[str, str]) -> str:
    result = subprocess.run(
        [str(VENV_BIN / "conveyor"), *args], env=env, capture_output=True, text=True, timeout=90
    )
    assert result.returncode == 0, f"conveyor {' '.join(args)}: {result.stdout}{result.stderr}"
    return result.stdout


def _reaches(host: Host, address: tuple[str, int]) -> bool:
    connect = f"import socket; socket.create_connection({address!r}, timeout=2)"
    result = subprocess.run(host.run([sys.executable, "-c", connect]), capture_output=True)
    return result.returncode == 0


def _namespaces(process: Process, kind: str) -> str:
    assert process.process is not None
    return os.readlink(f"/proc/{process.process.pid}/ns/{kind}")


def _batch(client: httpx.Client, ids: list[str]) -> dict[str, dict[str, Any]]:
    """Every job of the batch as GET /api/v1/jobs shows it, by id."""
    response = client.get("/api/v1/jobs", params={"task": TASK, "limit": 200})
    assert response.status_code == 200, response.text
    jobs = {job["id"]: job for job in response.json()["items"] if job["id"] in ids}
    assert set(jobs) == set(ids), "a job of the batch is missing from the ledger"
    return jobs


def _completions(log: str) -> dict[str, int]:
    """How many times each job's task body returned its result on this host, by job id (a
    delivery skipped because the job had already finished returns None)."""
    runs: dict[str, int] = {}
    for job_id in re.findall(rf"{re.escape(TASK)}\[([\w-]+)\] succeeded in [\d.]+s: {{", log):
        runs[job_id] = runs.get(job_id, 0) + 1
    return runs


def test_a_host_lost_mid_batch_loses_no_job(
    hosts: list[Host], system_redis_url: str, tmp_path: Path
) -> None:
    broker = redis.Redis.from_url(system_redis_url)
    broker.flushdb()
    processes: dict[str, Process] = {}
    with ExitStack() as cleanup:
        cleanup.callback(broker.flushdb)
        database_url = cleanup.enter_context(fresh_postgres_database("conveyor_scale"))
        relays = cleanup.enter_context(relay())
        env = _env(tmp_path / "api" / "data", database_url, system_redis_url)
        _conveyor(["db", "upgrade"], env)
        key = _conveyor(["keys", "create", "scale-out", "--admin"], env).strip().splitlines()[-1]
        api, api_url = api_process("api", env, tmp_path)
        processes["api"] = api
        api.start()
        cleanup.callback(api.stop, 10)
        for host in hosts:
            host_env = _env(
                tmp_path / host.name / "data",
                _through(relays, host, database_url),
                _through(relays, host, system_redis_url),
            )
            worker = Process(
                host.name, host.run(WORKER_ARGV), host_env, tmp_path / f"{host.name}.log"
            )
            processes[host.name] = worker
            worker.start()
            cleanup.callback(worker.stop, 10)
        client = cleanup.enter_context(
            httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {key}"}, timeout=15)
        )
        try:
            _run_batch(client, api_url, broker, processes, relays, hosts)
        except BaseException:
            for name, process in processes.items():
                print(f"--- {name}\n{process.log_tail(40)}")
            raise


def _run_batch(
    client: httpx.Client,
    api_url: str,
    broker: redis.Redis,
    processes: dict[str, Process],
    relays: Relay,
    hosts: list[Host],
) -> None:
    host_a, host_b = hosts
    node_a, node_b = f"worker@{host_a.name}", f"worker@{host_b.name}"
    worker_a, worker_b = processes[host_a.name], processes[host_b.name]
    wait_for(lambda: api_answers(api_url), 60, "the API to start")

    def both_answer() -> bool:
        for worker in (worker_a, worker_b):
            assert worker.process is not None
            assert worker.process.poll() is None, f"{worker.name} exited"
        names = client.get("/health/workers").json().get("workers", [])
        return {node_a, node_b} <= set(names)

    wait_for(both_answer, 60, f"{node_a} and {node_b} to answer a ping", interval=0.5)
    # Separate hosts indeed: own network and host name, no way to the services but the relay.
    root_net = os.readlink("/proc/self/ns/net")
    assert len({root_net, _namespaces(worker_a, "net"), _namespaces(worker_b, "net")}) == 3
    assert _namespaces(worker_a, "uts") != _namespaces(worker_b, "uts")
    redis_address = broker.connection_pool.connection_kwargs
    loopback = (str(redis_address["host"]), int(redis_address["port"]))
    assert not _reaches(host_a, loopback), "host-a reaches Redis on the root's loopback"
    for host in hosts:
        used = [count for (address, _), count in relays.accepted.items() if address == host.gateway]
        assert used, f"no relay for {host.name}"
        assert all(used), f"{host.name} has not connected through its relays"

    ids = []
    for _ in range(BATCH):
        response = client.post(
            "/api/v1/diagnostics/jobs", json={"steps": STEPS, "step_seconds": STEP_SECONDS}
        )
        assert response.status_code == 202, response.text
        ids.append(response.json()["job_id"])

    def a_finished_one_and_runs_two() -> bool:
        # Two jobs started on A with half their steps ahead are still running at the kill.
        jobs = [job for job in _batch(client, ids).values() if job["worker_host"] == node_a]
        finished = [job for job in jobs if job["state"] == "succeeded"]
        running = [
            job
            for job in jobs
            if job["state"] == "started" and job["progress"]["current"] <= STEPS // 2
        ]
        return bool(finished) and len(running) >= 2

    wait_for(a_finished_one_and_runs_two, 60, f"{node_a} to finish a job and run two", 0.05)
    worker_a.kill_hard()
    at_kill = _batch(client, ids)
    in_flight = {
        job_id
        for job_id, job in at_kill.items()
        if job["state"] == "started" and job["worker_host"] == node_a
    }
    assert len(in_flight) >= 2, at_kill
    assert all(at_kill[job_id]["attempts"] == 1 for job_id in in_flight)

    def all_final() -> dict[str, dict[str, Any]] | None:
        jobs = _batch(client, ids)
        return jobs if all(job["state"] in FINAL for job in jobs.values()) else None

    final: dict[str, dict[str, Any]] = wait_for(
        all_final, 75, "every job of the batch to finish", interval=0.5
    )
    states = {job_id: job["state"] for job_id, job in final.items()}
    assert set(states.values()) == {"succeeded"}, states
    # Both hosts took jobs from the one queue.
    assert {job["worker_host"] for job in final.values()} == {node_a, node_b}
    for job_id, job in final.items():
        assert job["result"] == {"steps": STEPS, "attempt": 1}, job
        if job_id in in_flight:
            # Redelivered once A's messages timed out, and run again on B.
            assert job["worker_host"] == node_b, job
            assert job["attempts"] == 2, job
        else:
            assert job["worker_host"] in (node_a, node_b), job
            assert job["attempts"] == 1, job

    # None left in the broker: the queue is empty and no message awaits an acknowledgement.
    wait_for(
        lambda: broker.llen("default") == 0 and broker.hlen("unacked") == 0,
        15,
        "the queue and the unacknowledged messages to be empty",
    )
    # Each job's body returned its result once, across both hosts; A's in-flight jobs on B.
    on_a = _completions(worker_a.log_path.read_text(errors="replace"))
    on_b = _completions(worker_b.log_path.read_text(errors="replace"))
    twice = {
        job_id: (on_a.get(job_id, 0), on_b.get(job_id, 0))
        for job_id in ids
        if on_a.get(job_id, 0) + on_b.get(job_id, 0) > 1
    }
    assert not twice, f"ran to success more than once (host-a, host-b): {twice}"
    assert all(on_b.get(job_id) == 1 and job_id not in on_a for job_id in in_flight)
    assert sum(on_a.values()) + sum(on_b.values()) == BATCH, (on_a, on_b)
