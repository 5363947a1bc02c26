"""Redis behind Sentinel: `CONVEYOR_REDIS_URL=sentinel://…` for every Redis part (broker,
results, progress events, locks), against a real Sentinel watching the test Redis."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from tests.integration.conftest import (
    REDIS_HOST,
    REDIS_PORT,
    SYSTEM_REDIS_DB,
    TEST_ENV,
    Process,
    api_process,
    free_port,
    fresh_postgres_database,
    wait_for,
)

MASTER = "conveyor-test"


@pytest.fixture
def sentinel_url(system_redis_url: str, tmp_path: Path) -> Iterator[str]:
    """A Sentinel of our own watching the test Redis as master `conveyor-test`."""
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server is not installed (it also runs Sentinel)")
    port = free_port()
    conf = tmp_path / "sentinel.conf"  # Sentinel rewrites its file: a copy of our own
    conf.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
        f"sentinel monitor {MASTER} {REDIS_HOST} {REDIS_PORT} 1\n"
    )
    process = Process(
        "sentinel", [server, str(conf), "--sentinel"], dict(os.environ), tmp_path / "sentinel.log"
    )
    process.start()
    try:
        probe = redis.Redis(host="127.0.0.1", port=port, socket_timeout=2)

        def knows_master() -> bool:
            try:
                return bool(probe.execute_command("SENTINEL", "get-master-addr-by-name", MASTER))
            except redis.RedisError:
                return False

        wait_for(knows_master, 20, "the Sentinel to know its master")
        redis.Redis.from_url(system_redis_url).flushdb()
        yield f"sentinel://127.0.0.1:{port}/{SYSTEM_REDIS_DB}"
    finally:
        process.stop()
        redis.Redis.from_url(system_redis_url).flushdb()


def test_a_system_on_sentinel_runs_jobs_with_progress(sentinel_url: str, tmp_path: Path) -> None:
    with fresh_postgres_database("conveyor_sentinel") as database_url:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")},
            **TEST_ENV,
            "CONVEYOR_REDIS_URL": sentinel_url,
            "CONVEYOR_REDIS_SENTINEL_MASTER": MASTER,
            "CONVEYOR_DATABASE_URL": database_url,
            "CONVEYOR_DATA_DIR": str(tmp_path / "data"),
        }
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        conveyor = [str(Path(sys.executable).parent / "conveyor")]
        subprocess.run([*conveyor, "db", "upgrade"], env=env, check=True, capture_output=True)
        created = subprocess.run(
            [*conveyor, "keys", "create", "sentinel-ops", "--admin"],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )
        key = created.stdout.strip().splitlines()[-1]
        api, api_url = api_process("api", env, tmp_path)
        worker = Process(
            "worker",
            [
                sys.executable, "-m", "celery", "-A", "conveyor.worker", "worker",
                "-Q", "default", "-c", "1", "-n", f"sentinel-{uuid.uuid4().hex[:6]}@%h",
                "--without-gossip", "--without-mingle",
            ],
            env,
            tmp_path / "worker.log",
        )  # fmt: skip
        api.start()
        worker.start()
        headers = {"Authorization": f"Bearer {key}"}
        try:
            with httpx.Client(base_url=api_url, headers=headers, timeout=15) as client:

                def ready() -> bool:
                    try:
                        return client.get("/health/ready").status_code == 200
                    except httpx.HTTPError:
                        return False

                wait_for(ready, 40, "the API on Sentinel to be ready")
                body = {"steps": 3, "step_seconds": 0.2}
                response = client.post("/api/v1/diagnostics/jobs", json=body)
                assert response.status_code == 202, response.text
                job_id = response.json()["job_id"]
                # The live stream reads the job's events through the Sentinel's master too.
                with client.stream("GET", f"/api/v1/jobs/{job_id}/events", timeout=40) as stream:
                    states = []
                    for line in stream.iter_lines():
                        if line.startswith("data:") and '"state"' in line:
                            states.append(line)
                        if '"succeeded"' in line or '"dead"' in line:
                            break
                assert any('"succeeded"' in line for line in states), states
                job = client.get(f"/api/v1/jobs/{job_id}").json()
                assert job["state"] == "succeeded"
                assert job["progress"]["current"] == 3
        except BaseException:
            print(worker.log_tail(), api.log_tail())
            raise
        finally:
            worker.stop()
            api.stop()
