"""`--json` on the listing commands: one JSON document on stdout, ids and times in full.

The CLI runs in process (CliRunner) on a SQLite ledger; nothing here needs Redis.
`conveyor status --json` needs a worker: tests/integration/test_cli_json.py.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from conveyor.cli import app
from conveyor.core import api_keys, db, dead_letters, ledger
from conveyor.core.models import ApiKey, Base, JobState
from conveyor.core.settings import get_settings

JOB_FIELDS = {"id", "name", "queue", "state", "progress", "attempts", "created_at", "finished_at"}
LETTER_FIELDS = {
    "id", "task_name", "reason", "error", "attempts", "failed_at", "replayed_job_id",
}  # fmt: skip
KEY_FIELDS = {
    "id", "name", "owner", "prefix", "admin", "created_at", "last_used_at", "revoked_at",
}  # fmt: skip


@pytest.fixture(autouse=True)
def ledger_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVEYOR_DATABASE_URL", "sqlite:///" + (tmp_path / "c.db").as_posix())
    # Colours forced on: whatever Rich would colour, the JSON must stay plain.
    monkeypatch.setenv("FORCE_COLOR", "1")
    get_settings.cache_clear()
    Base.metadata.create_all(db.get_engine())


def run_json(*args: str) -> Any:
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    assert "\x1b" not in result.stdout
    return json.loads(result.stdout)  # the whole of stdout: nothing else is on it


def utc(stamp: str) -> datetime:
    parsed = datetime.fromisoformat(stamp)
    assert parsed.utcoffset() == timedelta(0), stamp
    return parsed


def add_job(name: str, **changes: Any) -> str:
    job_id = str(uuid.uuid4())
    with db.session_scope() as session:
        job = ledger.create_job(session, ledger.NewJob(id=job_id, name=name, queue="default"))
        for attribute, value in changes.items():
            setattr(job, attribute, value)
    return job_id


def test_jobs_list(tmp_path: Path) -> None:
    queued = add_job("app.queued")
    done = add_job(
        "app.done",
        state=JobState.SUCCEEDED,
        progress_current=3,
        progress_total=3,
        attempts=2,
        finished_at=datetime(2026, 5, 1, 12, 30, tzinfo=UTC),
        kwargs={"password": "hunter2"},
    )
    rows = {row["id"]: row for row in run_json("jobs", "list")}
    assert set(rows) == {queued, done}  # full ids
    assert all(set(row) == JOB_FIELDS for row in rows.values())
    assert rows[done]["name"] == "app.done"
    assert rows[done]["queue"] == "default"
    assert rows[done]["state"] == "succeeded"
    assert rows[done]["progress"] == {"current": 3, "total": 3}
    assert rows[done]["attempts"] == 2
    assert utc(rows[done]["finished_at"]) == datetime(2026, 5, 1, 12, 30, tzinfo=UTC)
    assert rows[queued]["finished_at"] is None
    assert abs(utc(rows[queued]["created_at"]) - datetime.now(UTC)) < timedelta(minutes=5)

    only_done = run_json("jobs", "list", "--state", "succeeded")
    assert [row["id"] for row in only_done] == [done]
    assert run_json("jobs", "list", "--queue", "email") == []


def test_jobs_list_shows_no_arguments(tmp_path: Path) -> None:
    add_job("app.secret", kwargs={"password": "hunter2"}, args=["hunter2"])
    result = CliRunner().invoke(app, ["jobs", "list", "--json"])
    assert result.exit_code == 0
    assert "hunter2" not in result.stdout


def test_dead_letters_list() -> None:
    job_id = add_job("app.charge")
    message = "the card was declined by the issuer after three tries, " * 3
    with db.session_scope() as session:
        letter = dead_letters.record(
            session,
            dead_letters.Failure(
                job_id=job_id,
                task_name="app.charge",
                queue="payments",
                owner=None,
                args=[],
                kwargs={"card_token": "tok_secret"},
                exc=ValueError(message),
                traceback="Traceback: a secret line",
                reason="permanent",
                attempts=4,
            ),
        )
        letter_id = letter.id

    rows = run_json("dead-letters", "list")
    assert len(rows) == 1
    row = rows[0]
    assert set(row) == LETTER_FIELDS
    assert row["id"] == letter_id
    assert len(row["id"]) == 32  # in full, not cut to fit a column
    assert row["task_name"] == "app.charge"
    assert row["reason"] == "permanent"
    assert row["error"] == {"type": "ValueError", "message": message}  # not cut at 60
    assert row["attempts"] == 4
    assert row["replayed_job_id"] is None
    assert abs(utc(row["failed_at"]) - datetime.now(UTC)) < timedelta(minutes=5)
    assert run_json("dead-letters", "list", "--task", "app.other") == []


def test_dead_letters_list_shows_no_arguments_nor_traceback() -> None:
    job_id = add_job("app.charge")
    with db.session_scope() as session:
        dead_letters.record(
            session,
            dead_letters.Failure(
                job_id=job_id, task_name="app.charge", queue="payments", owner=None, args=[],
                kwargs={"card_token": "tok_secret"}, exc=ValueError("no"),
                traceback="Traceback: a private line", reason="permanent", attempts=1,
            ),
        )  # fmt: skip
    result = CliRunner().invoke(app, ["dead-letters", "list", "--json"])
    assert "tok_secret" not in result.stdout
    assert "a private line" not in result.stdout


def test_keys_list_never_shows_a_secret() -> None:
    with db.session_scope() as session:
        admin = api_keys.create_key(session, "ops", owner="ops", admin=True)
        client = api_keys.create_key(session, "web", owner="shop")
        api_keys.revoke(session, client.record.id)
        hashes = [record.key_hash for record in session.scalars(select(ApiKey))]

    result = CliRunner().invoke(app, ["keys", "list", "--json"])
    for secret in [admin.plaintext, client.plaintext, *hashes]:
        assert secret not in result.stdout

    rows = {row["name"]: row for row in run_json("keys", "list")}
    assert set(rows) == {"ops", "web"}
    assert all(set(row) == KEY_FIELDS for row in rows.values())
    assert rows["ops"]["id"] == admin.record.id
    assert rows["ops"]["prefix"] == admin.record.prefix
    assert admin.plaintext.startswith(f"cvk_{rows['ops']['prefix']}")
    assert (rows["ops"]["owner"], rows["ops"]["admin"]) == ("ops", True)
    assert (rows["web"]["owner"], rows["web"]["admin"]) == ("shop", False)
    assert rows["ops"]["revoked_at"] is None
    assert rows["web"]["last_used_at"] is None
    assert utc(rows["web"]["revoked_at"]) >= utc(rows["web"]["created_at"])


def test_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVEYOR_STRIPE_API_KEY", "sk_test_abc123")
    monkeypatch.setenv("CONVEYOR_API_PORT", "9000")
    get_settings.cache_clear()
    result = CliRunner().invoke(app, ["settings", "--json"])
    assert "sk_test_abc123" not in result.stdout

    rows = {row["variable"]: row for row in run_json("settings")}
    assert rows["CONVEYOR_API_PORT"] == {
        "group": "System",
        "variable": "CONVEYOR_API_PORT",
        "value": "9000",
        "default": "8000",
        "description": "Port the API listens on.",
        "changed": True,
    }
    assert rows["CONVEYOR_STRIPE_API_KEY"]["value"] == "********"
    assert rows["CONVEYOR_STRIPE_API_KEY"]["default"] is None  # unset: null, not a dash
    assert rows["CONVEYOR_API_HOST"]["changed"] is False

    changed = {row["variable"] for row in run_json("settings", "--changed")}
    assert {"CONVEYOR_API_PORT", "CONVEYOR_STRIPE_API_KEY"} <= changed
    assert "CONVEYOR_API_HOST" not in changed


def test_a_worker_for_an_undeclared_queue_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from conveyor.core.settings import SettingsError, get_settings

    monkeypatch.setenv("CONVEYOR_REDIS_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setenv("CONVEYOR_QUEUES", "shipping")
    get_settings.cache_clear()
    result = CliRunner().invoke(app, ["worker", "-Q", "shiping,default"])
    assert isinstance(result.exception, SettingsError)
    assert str(result.exception) == (
        "--queues: shiping not declared (declared: shipping, email, images, payments, "
        "reports, scraping, webhooks, default); declare your own in CONVEYOR_QUEUES"
    )
