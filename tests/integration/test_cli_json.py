"""`conveyor status --json` against the running stack: one JSON object, even with no worker."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import httpx
import pytest

from conveyor.core.redaction import safe_url
from conveyor.core.settings import get_settings
from conveyor.core.workloads import queues
from tests.integration.conftest import Stack, dead_letter_of, submit_diagnostics
from tests.integration.test_cli_ops import conveyor


def test_status_json(stack: Stack, admin: httpx.Client) -> None:
    job_id = submit_diagnostics(
        admin, steps=1, step_seconds=0, fail_attempts=1, failure="permanent"
    )
    letter = dead_letter_of(stack, admin, job_id)

    result = conveyor(stack, "status", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "\x1b" not in result.stdout
    status = json.loads(result.stdout)
    assert set(status) == {"redis", "database", "api_url", "queues", "workers", "jobs",
                           "dead_letters"}  # fmt: skip
    assert status["redis"] == {
        "url": safe_url(stack.env["CONVEYOR_REDIS_URL"]),
        "source": "CONVEYOR_REDIS_URL",
    }
    assert status["database"]["source"] == "CONVEYOR_DATABASE_URL"
    assert status["api_url"] is None  # no `conveyor up` runs here
    assert set(status["queues"]) == set(queues(get_settings()))
    assert all(isinstance(waiting, int) for waiting in status["queues"].values())
    assert status["workers"]
    assert all(worker["name"].startswith("test-") for worker in status["workers"])
    assert all(isinstance(worker["active_jobs"], int) for worker in status["workers"])
    assert status["jobs"]["dead"] >= 1
    newest = {row["id"]: row for row in status["dead_letters"]}
    assert letter["id"] in newest
    row = newest[letter["id"]]
    assert row["task_name"] == "conveyor.diagnostics.run"
    assert row["error"]["type"] == "PermanentError"
    assert datetime.fromisoformat(row["failed_at"]).utcoffset() == timedelta(0)


@pytest.mark.one_database  # no worker; the ledger figures: test_status_json, both
def test_status_json_without_a_worker_still_parses_and_fails(stack: Stack) -> None:
    stack.worker.stop()
    try:
        result = conveyor(stack, "status", "--json")
    finally:
        stack.start_worker()
    assert result.returncode == 1
    status = json.loads(result.stdout)
    assert status["workers"] == []
    assert "no worker answered" in result.stderr
