"""The sample application under examples/billing_app: its own FastAPI app, users table,
Alembic history, task module and `billing` queue, on Conveyor installed from this tree.
Its own test suite (written with conveyor.testing) runs here as a user would run it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
import redis

from tests.integration.conftest import fresh_postgres_database

APP = Path(__file__).resolve().parents[2] / "examples" / "billing_app"
BIN = Path(sys.executable).parent


def test_the_sample_app_runs_its_own_task_on_its_own_queue(redis_url: str, tmp_path: Path) -> None:
    with fresh_postgres_database("billing_app") as database:
        # One DATABASE_URL for the app and Conveyor; CONVEYOR_* only for what is Conveyor's.
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith("CONVEYOR_") and key not in ("DATABASE_URL", "REDIS_URL")
        }
        env |= {
            "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
            "DATABASE_URL": database.replace("postgresql://", "postgresql+psycopg://"),
            "CONVEYOR_REDIS_URL": redis_url,
            "CONVEYOR_TASK_MODULES": "billing_app.tasks",
            "CONVEYOR_QUEUES": "billing=billing_app.*",
            "CONVEYOR_WORKLOADS": "none",
            "CONVEYOR_DATA_DIR": str(tmp_path / "data"),
        }
        redis.Redis.from_url(redis_url).delete("billing")
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:cacheprovider",
            ],
            cwd=APP,
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
        assert "4 passed" in run.stdout

        with psycopg.connect(database) as connection:
            tables = {
                row[0]
                for row in connection.execute(
                    "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
                )
            }
            versions = connection.execute("SELECT version_num FROM alembic_version").fetchall()
        # The app's own table and history, beside Conveyor's.
        assert "users" in tables
        assert versions == [("app0001",)]
        assert "conveyor_jobs" in tables
        assert "conveyor_alembic_version" in tables
