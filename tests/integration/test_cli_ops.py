"""The operator CLI against the running stack: jobs, dead letters and status."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import pytest

from tests.integration.conftest import Stack, dead_letter_of, submit_diagnostics


def conveyor(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from conveyor.cli import main; main()", *args],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.one_database  # the CLI's output; its ledger reads (core.ledger) also serve test_jobs
def test_jobs_commands(stack: Stack, admin: httpx.Client) -> None:
    job_id = submit_diagnostics(admin, steps=2, step_seconds=0.1)
    watched = conveyor(stack, "jobs", "watch", job_id, "--interval", "0.1")
    assert watched.returncode == 0, watched.stdout + watched.stderr
    assert "succeeded" in watched.stdout
    shown = conveyor(stack, "jobs", "show", job_id)
    assert json.loads(shown.stdout)["result"] == {"steps": 2, "attempt": 1}
    listed = conveyor(stack, "jobs", "list", "--state", "succeeded", "--limit", "200")
    assert job_id in listed.stdout
    missing = conveyor(stack, "jobs", "show", "no-such-job")
    assert missing.returncode == 1
    assert "no job no-such-job" in missing.stdout


@pytest.mark.one_database  # core.jobs.cancel runs on both databases in test_jobs
def test_cancel_from_cli(stack: Stack, admin: httpx.Client) -> None:
    job_id = submit_diagnostics(admin, steps=200, step_seconds=0.1)
    cancelled = conveyor(stack, "jobs", "cancel", job_id)
    assert cancelled.returncode == 0, cancelled.stdout + cancelled.stderr
    stack.wait_job(job_id, {"cancelled"})
    watched = conveyor(stack, "jobs", "watch", job_id)
    assert watched.returncode == 1  # watch fails unless the job succeeded


def test_dead_letter_commands_and_purge(stack: Stack, admin: httpx.Client) -> None:
    job_id = submit_diagnostics(
        admin, steps=1, step_seconds=0, fail_attempts=1, failure="permanent"
    )
    letter = dead_letter_of(stack, admin, job_id)
    listed = conveyor(stack, "dead-letters", "list", "--limit", "200")
    assert letter["id"] in listed.stdout
    shown = conveyor(stack, "dead-letters", "show", letter["id"])
    assert "PermanentError" in shown.stdout
    replayed = conveyor(stack, "dead-letters", "replay", letter["id"])
    assert replayed.returncode == 0
    new_id = replayed.stdout.strip().split()[-1]
    assert stack.wait_job(new_id, {"dead", "succeeded"})["replay_of"] == job_id

    status = conveyor(stack, "status")
    assert status.returncode == 0, status.stdout + status.stderr
    assert "default" in status.stdout
    assert "test-" in status.stdout  # the live worker's node name

    # Nothing is that old yet; then everything is.
    kept = admin.post("/api/v1/dead-letters/purge", params={"older_than_days": 1})
    assert kept.status_code == 200
    assert kept.json()["purged"] == 0
    purged = conveyor(stack, "dead-letters", "purge", "--older-than", "0")
    assert purged.returncode == 0
    assert admin.get(f"/api/v1/dead-letters/{letter['id']}").status_code == 404
    assert admin.get("/api/v1/dead-letters").json()["items"] == []


def test_delay_in_a_fresh_interpreter_reaches_conveyors_broker(stack: Stack) -> None:
    """Importing a task module is enough: `.delay()` does not fall back to Celery's default
    app (amqp://localhost) and its job is in the ledger and runs."""
    script = (
        "import celery\n"
        "from conveyor.diagnostics.tasks import run_diagnostics\n"
        "assert celery.current_app.main == 'conveyor', celery.current_app.main\n"
        "print(run_diagnostics.delay(steps=1, step_seconds=0).id)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    job = stack.wait_job(result.stdout.strip(), {"succeeded"})
    assert job["name"] == "conveyor.diagnostics.run"
