"""deploy/supervisor/conveyor.conf run for real: supervisord starts the API, the workers, Beat
and the scheduler from the committed file (only its paths, user and settings pointed at this
test); `supervisorctl stop` in the middle of a job lets the worker finish it (warm shutdown),
and `supervisorctl start` brings the worker back.
"""

from __future__ import annotations

import getpass
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.integration.conftest import free_port, fresh_postgres_database, wait_for

CONF = Path(__file__).resolve().parents[2] / "deploy" / "supervisor" / "conveyor.conf"
BIN = Path(sys.executable).parent
WORKER = "conveyor:conveyor-worker-default"  # the diagnostics job's queue is `default`
NODE = f"default@{platform.node()}"

pytestmark = pytest.mark.integration


def rewritten(text: str, tmp: Path) -> str:
    """The committed file with its paths and user pointed at this test, nothing else."""
    for deployed, here in {
        "/opt/conveyor/venv/bin/": f"{BIN}/",
        "/etc/conveyor": str(tmp / "etc"),
        "/var/lib/conveyor": str(tmp / "data"),
        "/var/log/conveyor": str(tmp / "log"),
        "user=conveyor": f"user={getpass.getuser()}",
    }.items():
        assert deployed in text, f"{deployed} no longer in {CONF.name}: update this test"
        text = text.replace(deployed, here)
    return text


@dataclass
class Supervised:
    conf: Path
    env: dict[str, str]
    tmp: Path
    api_url: str

    def ctl(self, *args: str) -> str:
        done = subprocess.run(
            [str(BIN / "supervisorctl"), "-c", str(self.conf), *args],
            capture_output=True,
            text=True,
            timeout=420,  # a stop waits up to stopwaitsecs
            env=self.env,
            check=False,
        )
        return done.stdout + done.stderr

    def conveyor(self, *args: str) -> str:
        done = subprocess.run(
            [str(BIN / "conveyor"), *args],
            capture_output=True,
            text=True,
            timeout=60,
            env=self.env,
            cwd=self.tmp / "etc",  # where the programs run, reading ./.env
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    def logs(self) -> str:
        return "\n".join(
            f"--- {path.name}\n{path.read_text()[-3000:]}"
            for path in sorted((self.tmp / "log").glob("*.log"))
        )


def live_workers(api_url: str) -> list[str]:
    try:
        answer = httpx.get(f"{api_url}/health/workers", timeout=10)
    except httpx.HTTPError:
        return []
    workers: list[str] = answer.json().get("workers", []) if answer.status_code == 200 else []
    return workers


@pytest.fixture
def supervised(system_redis_url: str, tmp_path: Path) -> Iterator[Supervised]:
    for name in ("etc", "data", "log"):
        (tmp_path / name).mkdir()
    conf = tmp_path / "conveyor.conf"
    conf.write_text(rewritten(CONF.read_text(), tmp_path))
    main = tmp_path / "supervisord.conf"
    main.write_text(
        f"""[unix_http_server]
file={tmp_path}/supervisor.sock

[supervisord]
logfile={tmp_path}/log/supervisord.log
pidfile={tmp_path}/supervisord.pid

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://{tmp_path}/supervisor.sock

[include]
files={conf}
"""
    )
    # Only what the programs find in ./.env: none of this process's CONVEYOR_* settings.
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("CONVEYOR_") and k != "PROMETHEUS_MULTIPROC_DIR"
    }
    port = free_port()
    redis.Redis.from_url(system_redis_url).flushdb()
    with fresh_postgres_database("conveyor_deploy") as database_url:
        (tmp_path / "etc" / ".env").write_text(
            f"CONVEYOR_REDIS_URL={system_redis_url}\n"
            f"CONVEYOR_DATABASE_URL={database_url}\n"
            "CONVEYOR_API_HOST=127.0.0.1\n"
            f"CONVEYOR_API_PORT={port}\n"
            "CONVEYOR_LOG_JSON=false\n"
        )
        system = Supervised(main, env, tmp_path, f"http://127.0.0.1:{port}")
        system.conveyor("db", "upgrade")  # as the file's header says: before supervisord
        daemon = subprocess.Popen(
            [str(BIN / "supervisord"), "-n", "-c", str(main)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            yield system
        finally:
            system.ctl("shutdown")
            try:
                daemon.wait(timeout=60)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
            redis.Redis.from_url(system_redis_url).flushdb()


def job(client: httpx.Client, job_id: str) -> dict[str, Any]:
    body: dict[str, Any] = client.get(f"/api/v1/jobs/{job_id}").json()
    return body


def test_a_worker_stopped_mid_job_loses_nothing_and_comes_back(supervised: Supervised) -> None:
    try:
        stop_a_worker_mid_job(supervised)
    except BaseException:
        print(supervised.ctl("status"), supervised.logs())  # shown with the failure
        raise


def stop_a_worker_mid_job(supervised: Supervised) -> None:
    wait_for(lambda: NODE in live_workers(supervised.api_url), 90, f"{NODE} to answer")
    key = supervised.conveyor("keys", "create", "deploy-test", "--admin").strip().splitlines()[-1]
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=supervised.api_url, headers=headers, timeout=10) as client:
        response = client.post("/api/v1/diagnostics/jobs", json={"steps": 10, "step_seconds": 0.5})
        assert response.status_code == 202, response.text
        job_id = response.json()["job_id"]
        wait_for(
            lambda: job(client, job_id)["progress"]["current"] >= 2, 30, "the job to be running"
        )

        started = time.monotonic()
        stopped = supervised.ctl("stop", WORKER)
        assert "stopped" in stopped, stopped
        took = time.monotonic() - started
        # Warm shutdown: the worker took no new job and finished this one before it exited.
        after_stop = job(client, job_id)
        assert after_stop["state"] == "succeeded", (took, after_stop)
        assert after_stop["attempts"] == 1, after_stop
        assert NODE not in live_workers(supervised.api_url)

        assert "started" in supervised.ctl("start", WORKER)
        wait_for(lambda: NODE in live_workers(supervised.api_url), 90, f"{NODE} back")
        assert job(client, job_id)["progress"]["current"] == 10

        # The worker started again runs new jobs too.
        again = client.post("/api/v1/diagnostics/jobs", json={"steps": 1, "step_seconds": 0})
        assert again.status_code == 202, again.text
        wait_for(
            lambda: job(client, again.json()["job_id"])["state"] == "succeeded",
            30,
            "a new job on the restarted worker",
        )
