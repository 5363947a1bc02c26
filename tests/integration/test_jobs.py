"""Diagnostics jobs through the HTTP API, run by a real worker."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from conveyor.core.jobs import Submission, submit
from tests.integration.conftest import Stack, dead_letter_of, submit_diagnostics, wait_for


@pytest.mark.both_brokers
def test_job_succeeds_with_progress_and_result(stack: Stack, admin: httpx.Client) -> None:
    job_id = submit_diagnostics(admin, steps=3, step_seconds=0.05)
    job = stack.wait_job(job_id, {"succeeded"})
    assert job["name"] == "conveyor.diagnostics.run"
    assert job["queue"] == "default"
    assert job["attempts"] == 1
    assert job["progress"] == {"current": 3, "total": 3, "message": "attempt 1: step 3 of 3"}
    assert job["result"] == {"steps": 3, "attempt": 1}
    assert job["error"] is None
    assert job["created_at"] <= job["started_at"] <= job["finished_at"]
    assert job["worker_host"].startswith("test-")


@pytest.mark.both_brokers
def test_transient_failures_retry_then_succeed(stack: Stack, admin: httpx.Client) -> None:
    job_id = submit_diagnostics(admin, steps=1, step_seconds=0, fail_attempts=2)
    job = stack.wait_job(job_id, {"succeeded", "dead"})
    assert job["state"] == "succeeded"
    assert job["attempts"] == 3
    assert job["result"] == {"steps": 1, "attempt": 3}


@pytest.mark.both_brokers
def test_retrying_state_is_visible_between_attempts(stack: Stack, admin: httpx.Client) -> None:
    job_id = submit(Submission(task_name="tests.states.fail_once", kwargs={}, owner="ops")).id
    seen: set[str] = set()

    def finished() -> bool:
        state = admin.get(f"/api/v1/jobs/{job_id}").json()["state"]
        seen.add(state)
        return state == "succeeded"

    wait_for(finished, 30, "the job to succeed", interval=0.1)
    assert "retrying" in seen
    job = admin.get(f"/api/v1/jobs/{job_id}").json()
    assert (job["attempts"], job["result"]) == (2, 2)


@pytest.mark.both_brokers
def test_permanent_failure_becomes_dead_letter(stack: Stack, admin: httpx.Client) -> None:
    job_id = submit_diagnostics(
        admin, steps=1, step_seconds=0, fail_attempts=1, failure="permanent"
    )
    job = stack.wait_job(job_id, {"dead", "succeeded"})
    assert job["state"] == "dead"
    assert job["attempts"] == 1
    assert job["error"]["type"] == "PermanentError"
    assert "Traceback" in job["error"]["traceback"]
    letters = admin.get("/api/v1/dead-letters").json()["items"]
    letter = next(item for item in letters if item["job_id"] == job_id)
    assert letter["reason"] == "permanent_error"
    assert letter["task_name"] == "conveyor.diagnostics.run"
    assert letter["kwargs"]["failure"] == "permanent"
    detail = admin.get(f"/api/v1/dead-letters/{letter['id']}").json()
    assert "PermanentError" in detail["error"]["traceback"]


@pytest.mark.both_brokers
def test_exhausted_retries_become_dead_letter(stack: Stack, admin: httpx.Client) -> None:
    job_id = submit_diagnostics(admin, steps=1, step_seconds=0, fail_attempts=20)
    job = stack.wait_job(job_id, {"dead", "succeeded"}, timeout=60)
    assert job["state"] == "dead"
    assert job["attempts"] == 6  # the first try and five retries
    letters = admin.get("/api/v1/dead-letters").json()["items"]
    letter = next(item for item in letters if item["job_id"] == job_id)
    assert letter["reason"] == "retries_exhausted"
    assert letter["attempts"] == 6


def test_replay_creates_linked_job(stack: Stack, admin: httpx.Client) -> None:
    job_id = submit_diagnostics(
        admin, steps=1, step_seconds=0, fail_attempts=1, failure="permanent"
    )
    letter = dead_letter_of(stack, admin, job_id)
    replayed = admin.post(f"/api/v1/dead-letters/{letter['id']}/replay")
    assert replayed.status_code == 202, replayed.text
    new_id = replayed.json()["job_id"]
    assert new_id != job_id
    new_job = stack.wait_job(new_id, {"dead", "succeeded"})
    assert new_job["replay_of"] == job_id
    assert new_job["kwargs"] == {
        "steps": 1,
        "step_seconds": 0,
        "fail_attempts": 1,
        "failure": "permanent",
    }
    after = admin.get(f"/api/v1/dead-letters/{letter['id']}").json()
    assert after["replayed_job_id"] == new_id
    assert admin.delete(f"/api/v1/dead-letters/{letter['id']}").status_code == 204
    assert admin.get(f"/api/v1/dead-letters/{letter['id']}").status_code == 404


@pytest.mark.both_brokers
def test_cancel_running_job_stops_it(stack: Stack, admin: httpx.Client) -> None:
    job_id = submit_diagnostics(admin, steps=100, step_seconds=0.1)
    wait_for(
        lambda: admin.get(f"/api/v1/jobs/{job_id}").json()["progress"]["current"] >= 2,
        30,
        "the job to make progress",
    )
    response = admin.delete(f"/api/v1/jobs/{job_id}")
    assert response.status_code == 200, response.text
    assert response.json()["state"] == "cancelled"
    time.sleep(1.0)
    first = admin.get(f"/api/v1/jobs/{job_id}").json()
    time.sleep(1.0)
    second = admin.get(f"/api/v1/jobs/{job_id}").json()
    assert second["state"] == "cancelled"
    assert second["finished_at"] is not None
    assert second["progress"]["current"] == first["progress"]["current"] < 100
    assert admin.delete(f"/api/v1/jobs/{job_id}").status_code == 409


@pytest.mark.both_brokers
def test_cancel_queued_job_never_runs(stack: Stack, admin: httpx.Client) -> None:
    # Countdown keeps the job queued long enough to cancel it before it starts.
    job = submit(
        Submission(
            task_name="conveyor.diagnostics.run", kwargs={"steps": 1}, owner="ops", countdown=2
        )
    )
    assert admin.delete(f"/api/v1/jobs/{job.id}").status_code == 200
    time.sleep(3.5)
    body = admin.get(f"/api/v1/jobs/{job.id}").json()
    assert body["state"] == "cancelled"
    assert body["attempts"] == 0
    assert body["started_at"] is None


def test_owner_isolation(stack: Stack, admin: httpx.Client) -> None:
    alice = stack.key_for("alice")
    bob = stack.key_for("bob")
    job = submit(
        Submission(task_name="conveyor.diagnostics.run", kwargs={"steps": 1}, owner="alice")
    )
    stack.wait_job(job.id, {"succeeded"})
    with stack.client(alice) as client:
        assert client.get(f"/api/v1/jobs/{job.id}").status_code == 200
        assert job.id in [item["id"] for item in client.get("/api/v1/jobs").json()["items"]]
    with stack.client(bob) as client:
        assert client.get(f"/api/v1/jobs/{job.id}").status_code == 404
        assert client.delete(f"/api/v1/jobs/{job.id}").status_code == 404
        assert client.get(f"/api/v1/jobs/{job.id}/events").status_code == 404
        listed = [item["id"] for item in client.get("/api/v1/jobs").json()["items"]]
        assert job.id not in listed
        # Non-admin keys neither start diagnostics nor see dead letters.
        assert client.post("/api/v1/diagnostics/jobs", json={}).status_code == 403
        assert client.get("/api/v1/dead-letters").status_code == 403
    assert admin.get(f"/api/v1/jobs/{job.id}").status_code == 200


def test_list_pages_with_cursor_and_filters(stack: Stack, admin: httpx.Client) -> None:
    owner_key = stack.key_for("pager")
    ids = {
        submit(
            Submission(
                task_name="conveyor.diagnostics.run",
                kwargs={"steps": 1, "step_seconds": 0},
                owner="pager",
            )
        ).id
        for _ in range(7)
    }
    with stack.client(owner_key) as client:
        seen: list[str] = []
        cursor = None
        while True:
            params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
            page = client.get("/api/v1/jobs", params=params).json()
            seen.extend(item["id"] for item in page["items"])
            cursor = page["next_cursor"]
            if not cursor:
                break
        assert len(seen) == len(set(seen)) == 7
        assert set(seen) == ids
        wait_for(
            lambda: (
                len(client.get("/api/v1/jobs", params={"state": "succeeded"}).json()["items"]) == 7
            ),
            30,
            "all jobs to succeed",
        )
        assert client.get("/api/v1/jobs", params={"queue": "email"}).json()["items"] == []


def test_server_sent_events_stream_progress(stack: Stack, admin: httpx.Client) -> None:
    job_id = submit_diagnostics(admin, steps=4, step_seconds=0.2)
    events: list[tuple[str, dict[str, object]]] = []
    with admin.stream("GET", f"/api/v1/jobs/{job_id}/events") as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        event = ""
        for line in response.iter_lines():
            if line.startswith("event: "):
                event = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.append((event, json.loads(line.removeprefix("data: "))))
    names = [name for name, _ in events]
    assert names[-1] == "succeeded"
    progress = [data["progress"]["current"] for name, data in events if name == "progress"]  # type: ignore[index]
    # Reports are written at most once per CONVEYOR_PROGRESS_INTERVAL (0.25 s), the latest
    # each time: some of the four are seen while it runs, and the ending carries the last.
    assert progress == sorted(progress)
    assert any(0 < value < 4 for value in progress)
    assert events[-1][1]["progress"]["current"] == 4  # type: ignore[index]


def test_unauthenticated_and_unknown(stack: Stack) -> None:
    with httpx.Client(base_url=stack.api_url) as anonymous:
        assert anonymous.get("/api/v1/jobs").status_code == 401
        assert (
            anonymous.get("/api/v1/jobs", headers={"Authorization": "Bearer nope"}).status_code
            == 401
        )
        revoked_key = stack.key_for("revoked-owner")
        from conveyor.core import api_keys
        from conveyor.core.db import session_scope

        with session_scope() as session:
            api_keys.revoke(session, api_keys.split_key(revoked_key) or "")
        assert (
            anonymous.get(
                "/api/v1/jobs", headers={"Authorization": f"Bearer {revoked_key}"}
            ).status_code
            == 401
        )
    with stack.client() as client:
        assert client.get("/api/v1/jobs/does-not-exist").status_code == 404


def test_replay_with_idempotency_key_runs_once(stack: Stack, admin: httpx.Client) -> None:
    job_id = submit_diagnostics(
        admin, steps=1, step_seconds=0, fail_attempts=1, failure="permanent"
    )
    letter = dead_letter_of(stack, admin, job_id)
    url = f"/api/v1/dead-letters/{letter['id']}/replay"
    first = admin.post(url, headers={"Idempotency-Key": f"replay-{letter['id']}"})
    second = admin.post(url, headers={"Idempotency-Key": f"replay-{letter['id']}"})
    assert first.status_code == second.status_code == 202
    assert first.json()["job_id"] == second.json()["job_id"]
    assert second.headers["idempotent-replayed"] == "true"
    replays = admin.get("/api/v1/jobs", params={"limit": 200}).json()["items"]
    assert [job["replay_of"] for job in replays].count(job_id) == 1


def test_a_task_no_worker_has_is_a_dead_letter_naming_the_fix(
    stack: Stack, admin: httpx.Client
) -> None:
    # Celery drops such a message; without this the job would stay queued for ever.
    job_id = submit(Submission(task_name="tests.no_such_task", args=[1], owner="ops")).id
    job = stack.wait_job(job_id, {"dead", "succeeded"})
    assert job["state"] == "dead"
    assert "CONVEYOR_TASK_MODULES" in job["error"]["message"]
    letter = dead_letter_of(stack, admin, job_id)
    assert letter["reason"] == "unregistered"
    assert letter["args"] == [1]


def test_delay_from_another_thread_reaches_conveyors_broker(stack: Stack) -> None:
    import threading

    from tests.integration.tasks import in_parts

    ids: list[str] = []
    # FastAPI runs sync routes in a thread pool, where Celery's "current app" is per thread.
    thread = threading.Thread(target=lambda: ids.append(in_parts.delay(left=0).id))
    thread.start()
    thread.join(10)
    assert stack.wait_job(ids[0], {"succeeded", "dead"})["state"] == "succeeded"
