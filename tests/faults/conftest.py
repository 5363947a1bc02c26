"""The fault tier: the production layout (API, worker, Beat as separate processes, a Redis of
its own with AOF, PostgreSQL) with faults injected, each test ending with count in ==
count out. Recovery settings are shortened so healing fits a test: heartbeats every second,
a silent worker gone after 3 s, a reconciler run every second.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

from conveyor.core.settings import get_settings
from conveyor.core.workloads import queues
from tests.integration.conftest import (
    Process,
    api_answers,
    api_process,
    free_port,
    fresh_postgres_database,
    wait_for,
)

FAULT_ENV = {
    "CONVEYOR_TASK_SOFT_TIME_LIMIT": "20",
    "CONVEYOR_TASK_TIME_LIMIT": "25",
    # Long on purpose: only the reconciler can explain a quick recovery.
    "CONVEYOR_VISIBILITY_TIMEOUT": "600",
    "CONVEYOR_RETRY_BACKOFF_MAX": "2",
    "CONVEYOR_WORKER_HEARTBEAT_SECONDS": "1",
    "CONVEYOR_WORKER_LOST_AFTER_SECONDS": "3",
    "CONVEYOR_RECONCILE_INTERVAL_SECONDS": "1",
    "CONVEYOR_RECONCILE_GRACE_SECONDS": "4",
    "CONVEYOR_API_RATE_LIMIT_PER_MINUTE": "0",
    "CONVEYOR_LOG_JSON": "false",
}
TERMINAL = {"succeeded", "failed", "cancelled", "dead"}


@dataclass
class PrivateRedis:
    """A redis-server of the test's own, so it can be stopped, restarted and frozen."""

    executable: str
    directory: Path
    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                self.executable, "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.directory), "--appendonly", "yes", "--appendfsync", "always",
                "--save", "", "--logfile", str(self.directory / "redis.log"),
            ],
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        client = redis.Redis(port=self.port, socket_timeout=1)
        wait_for(lambda: _pings(client), 15, "the private Redis to answer")

    def stop(self) -> None:
        """SIGTERM: Redis writes its append-only file and exits, as on a restart."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.terminate()
            self.process.wait(15)

    def freeze(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    from conveyor.local.embedded_redis import find_redis_server

    executable = shutil.which("redis-server") or find_redis_server()
    if executable is None:
        pytest.skip("no redis-server for a private Redis")
    (tmp_path / "redis").mkdir()
    server = PrivateRedis(executable, tmp_path / "redis", free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    with fresh_postgres_database("conveyor_fault") as url:
        yield url


@dataclass
class FaultStack:
    env: dict[str, str]
    tmp: Path
    api_url: str
    admin_key: str
    database: Engine
    processes: dict[str, Process] = field(default_factory=dict)

    def start(self, name: str, argv: list[str]) -> Process:
        process = Process(name, argv, self.env, self.tmp / f"{name}.log")
        process.start()
        self.processes[name] = process
        return process

    def start_worker(self, name: str = "worker") -> Process:
        node = f"fault-{uuid.uuid4().hex[:8]}@%h"
        return self.start(
            name,
            [
                sys.executable, "-m", "celery", "-A", "conveyor.worker", "worker",
                "-Q", ",".join(queues(get_settings())), "-c", "2", "-n", node,
                "--without-gossip", "--without-mingle", "--loglevel", "INFO",
            ],
        )  # fmt: skip

    def client(self) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.admin_key}"}
        return httpx.Client(base_url=self.api_url, headers=headers, timeout=30)

    def states(self, job_ids: list[str]) -> dict[str, tuple[str, int]]:
        """State and attempts of each job, read from the ledger itself."""
        with self.database.connect() as connection:
            rows = connection.execute(
                text("SELECT id, state, attempts FROM conveyor_jobs WHERE id = ANY(:ids)"),
                {"ids": job_ids},
            ).all()
        return {row.id: (row.state, row.attempts) for row in rows}

    def wait_all_terminal(self, job_ids: list[str], timeout: float) -> dict[str, tuple[str, int]]:
        def done() -> dict[str, tuple[str, int]] | None:
            states = self.states(job_ids)
            finished = len(states) == len(job_ids)
            return states if finished and all(s in TERMINAL for s, _ in states.values()) else None

        try:
            result: dict[str, tuple[str, int]] = wait_for(done, timeout, "every job to end", 0.5)
        except AssertionError:
            print(self.states(job_ids))
            for process in self.processes.values():
                print(f"--- {process.name}\n{process.log_tail(40)}")
            raise
        return result

    def stop(self) -> None:
        for process in reversed(list(self.processes.values())):
            process.stop()


@pytest.fixture
def fault_stack(
    private_redis: PrivateRedis, postgres_url: str, tmp_path: Path
) -> Iterator[FaultStack]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("CONVEYOR_") and k != "PROMETHEUS_MULTIPROC_DIR"
    }
    admin_key = "cvk_0123456789ab_fault-tier-admin-key-000000000000"
    env.update(FAULT_ENV)
    env.update(
        {
            "CONVEYOR_DATA_DIR": str(tmp_path / "data"),
            "CONVEYOR_DATABASE_URL": postgres_url,
            "CONVEYOR_REDIS_URL": private_redis.url,
            "CONVEYOR_BOOTSTRAP_API_KEY": admin_key,
            "CONVEYOR_ALLOW_PRIVATE_NETWORKS": "true",
            "CONVEYOR_WEBHOOK_RETRY_SCHEDULE": "1,1,1,2,2,2,2,2",
        }
    )
    conveyor = [sys.executable, "-c", "from conveyor.cli import main; main()"]
    subprocess.run([*conveyor, "db", "upgrade"], env=env, check=True, capture_output=True)
    engine = create_engine(postgres_url.replace("postgresql://", "postgresql+psycopg://"))
    api, api_url = api_process("api", env, tmp_path)
    built = FaultStack(env, tmp_path, api_url, admin_key, engine)
    built.processes["api"] = api
    # The API, the worker and Beat boot side by side (none waits for another).
    api.start()
    try:
        built.start_worker()
        built.start(
            "beat",
            [sys.executable, "-m", "celery", "-A", "conveyor.worker", "beat", "--loglevel", "INFO"],
        )
        # `conveyor api` makes the bootstrap key; uvicorn alone does not, so make it here
        # (the API reads keys per request, not at start).
        _create_admin_key(env, admin_key)
        wait_for(lambda: api_answers(api_url), 30, "the API to start")
        wait_for(lambda: _workers_answer(api_url), 60, "a worker to answer", 0.5)
        yield built
    finally:
        built.stop()
        engine.dispose()


def _create_admin_key(env: dict[str, str], key: str) -> None:
    script = (
        "from conveyor.core import api_keys\n"
        "from conveyor.core.db import session_scope\n"
        "with session_scope() as session:\n"
        f"    api_keys.ensure_key(session, {key!r})\n"
    )
    subprocess.run([sys.executable, "-c", script], env=env, check=True, capture_output=True)


def _workers_answer(api_url: str) -> bool:
    try:
        return httpx.get(f"{api_url}/health/workers", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def submit(client: httpx.Client, **body: Any) -> httpx.Response:
    return client.post("/api/v1/diagnostics/jobs", json=body)


def elapsed_since(start: float) -> float:
    return round(time.monotonic() - start, 1)
