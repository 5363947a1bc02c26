"""`conveyor keys create`: a key named like the bootstrap admin is not the bootstrap admin.

The CLI runs in process (CliRunner) on a SQLite ledger; the API answers through a
TestClient on the same ledger, with its rate limits off so no Redis is needed.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from conveyor.api.app import create_app
from conveyor.cli import app
from conveyor.cli.run import bootstrap_key
from conveyor.core import api_keys, db, ledger
from conveyor.core.models import Base
from conveyor.core.settings import get_settings

HOOK = {"url": "https://93.184.216.34/hooks", "events": ["job.succeeded"]}  # nothing connects


@pytest.fixture
def bootstrap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A ledger with the bootstrap admin key, as `conveyor up` leaves it; returns the key."""
    key = api_keys.generate_plaintext()
    monkeypatch.setenv("CONVEYOR_DATABASE_URL", "sqlite:///" + (tmp_path / "c.db").as_posix())
    monkeypatch.setenv("CONVEYOR_API_RATE_LIMIT_PER_MINUTE", "0")
    monkeypatch.setenv("CONVEYOR_API_AUTH_FAILURES_PER_MINUTE", "0")
    # The app configures Celery when built; nothing here may reach a Redis (port 1: none).
    monkeypatch.setenv("CONVEYOR_REDIS_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setenv("CONVEYOR_BOOTSTRAP_API_KEY", key)
    get_settings.cache_clear()
    Base.metadata.create_all(db.get_engine())
    bootstrap_key()
    return key


def create(*args: str) -> tuple[int, list[str], list[str]]:
    result = CliRunner().invoke(app, ["keys", "create", *args])
    return result.exit_code, result.stdout.splitlines(), result.stderr.splitlines()


def test_a_key_named_admin_sees_nothing_of_the_bootstrap_admin(bootstrap: str) -> None:
    job_id = str(uuid.uuid4())
    with db.session_scope() as session:
        ledger.create_job(
            session,
            ledger.NewJob(id=job_id, name="conveyor.diagnostics.run", queue="default",
                          owner=api_keys.BOOTSTRAP_OWNER),
        )  # fmt: skip

    code, out, _ = create("admin")
    assert code == 0
    key = out[-1]  # the key alone on the last line
    assert key.startswith("cvk_")
    assert "for the new owner own_" in out[0]

    with TestClient(create_app()) as client:
        as_admin = {"Authorization": f"Bearer {bootstrap}", "Idempotency-Key": "hook-1"}
        as_named_admin = {"Authorization": f"Bearer {key}", "Idempotency-Key": "hook-1"}
        assert client.get(f"/api/v1/jobs/{job_id}", headers=as_admin).status_code == 200
        assert client.get(f"/api/v1/jobs/{job_id}", headers=as_named_admin).status_code == 404
        assert client.get("/api/v1/jobs", headers=as_named_admin).json()["items"] == []

        # The same Idempotency-Key replays nothing of the admin's, least of all a secret.
        admins = client.post("/api/v1/webhook-endpoints", json=HOOK, headers=as_admin)
        theirs = client.post("/api/v1/webhook-endpoints", json=HOOK, headers=as_named_admin)
        assert admins.status_code == theirs.status_code == 201
        assert theirs.json()["id"] != admins.json()["id"]
        assert theirs.json()["secret"] != admins.json()["secret"]
        assert theirs.json()["owner"] != api_keys.BOOTSTRAP_OWNER


def test_joining_the_admin_owner_is_refused_in_one_line(bootstrap: str) -> None:
    code, out, err = create("admin", "--owner", api_keys.BOOTSTRAP_OWNER)
    assert code == 1
    assert out == []
    assert len(err) == 1
    assert "--owner admin" in err[0]
    assert "has admin keys" in err[0]

    code, out, _ = create("tenant")
    tenant_owner = out[0].split("for the new owner ", 1)[1].split(":", 1)[0]
    code, out, err = create("root", "--admin", "--owner", tenant_owner)
    assert code == 1
    assert len(err) == 1
    assert f"--owner {tenant_owner}" in err[0]


def test_an_existing_owner_is_joined_only_when_named(bootstrap: str) -> None:
    code, out, _ = create("web")
    owner = out[0].split("for the new owner ", 1)[1].split(":", 1)[0]
    code, out, _ = create("web-2", "--owner", owner)
    assert code == 0
    assert out[0].startswith(f"added a key for the existing owner {owner}:")
    assert out[-1].startswith("cvk_")
    with db.session_scope() as session:
        record = api_keys.authenticate(session, out[-1])
        assert record is not None
        assert (record.owner, record.name) == (owner, "web-2")
