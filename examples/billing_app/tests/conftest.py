"""Real Redis, a real database and a real worker: set DATABASE_URL and CONVEYOR_REDIS_URL to
test ones (the tables are created here), then `pytest`."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from conveyor.core import migrate

pytest_plugins = ["conveyor.testing"]

HERE = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session", autouse=True)
def tables() -> None:
    """The app's migrations, then Conveyor's, on the one database."""
    if not os.environ.get("DATABASE_URL"):
        pytest.skip("set DATABASE_URL to a test database (its tables are created)")
    subprocess.run([sys.executable, "-m", "alembic", "upgrade", "head"], cwd=HERE, check=True)
    # Conveyor's own tables and history (`conveyor db upgrade` does the same).
    migrate.upgrade()


@pytest.fixture
def client() -> Iterator[TestClient]:
    from billing_app.main import app

    with TestClient(app) as client:
        yield client
