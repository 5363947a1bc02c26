"""A killed worker loses nothing; readiness tells the truth when the worker is gone."""

from __future__ import annotations

import json

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import Stack, extra_api, submit_diagnostics, wait_for


@pytest.mark.both_brokers
@pytest.mark.one_database  # redelivery is the broker's
def test_killed_worker_job_completes_on_second_attempt(stack: Stack, admin: httpx.Client) -> None:
    job_id = submit_diagnostics(admin, steps=12, step_seconds=0.25)
    wait_for(
        lambda: admin.get(f"/api/v1/jobs/{job_id}").json()["progress"]["current"] >= 3,
        30,
        "the long job to be half-way",
    )
    stack.worker.kill_hard()
    mid = admin.get(f"/api/v1/jobs/{job_id}").json()
    assert mid["state"] == "started"
    assert mid["attempts"] == 1

    # Redis hands the unacknowledged message out again once its visibility timeout passes.
    with stack.quick_redelivery_worker():
        job = stack.wait_job(job_id, {"succeeded", "dead"}, timeout=90)
    assert job["state"] == "succeeded"
    assert job["attempts"] == 2
    assert job["progress"]["current"] == 12
    assert job["result"] == {"steps": 12, "attempt": 1}


def test_readiness_needs_no_worker_and_workers_are_reported_apart(
    stack: Stack, admin: httpx.Client
) -> None:
    ready = httpx.get(f"{stack.api_url}/health/ready", timeout=10)
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"] == {"database": "ok", "broker": "ok"}
    workers = httpx.get(f"{stack.api_url}/health/workers", timeout=10)
    assert workers.status_code == 200
    assert any(name.startswith("test-") for name in workers.json()["workers"])

    stack.worker.stop()
    try:
        # Jobs are still accepted: an API without workers must stay in service.
        assert httpx.get(f"{stack.api_url}/health/ready", timeout=10).status_code == 200
        gone = httpx.get(f"{stack.api_url}/health/workers", timeout=10)
        assert gone.status_code == 503
        assert gone.json()["reason"] == "no worker answered a ping within 1s"
        assert httpx.get(f"{stack.api_url}/health/live", timeout=5).status_code == 200
    finally:
        stack.start_worker()
    assert httpx.get(f"{stack.api_url}/health/workers", timeout=10).status_code == 200


def _scrape(stack: Stack) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"{stack.api_url}/metrics", timeout=10).text
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def _value(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_aggregate_every_worker_process(stack: Stack, admin: httpx.Client) -> None:
    task = "conveyor.diagnostics.run"
    before = _scrape(stack)
    ids = [submit_diagnostics(admin, steps=1, step_seconds=0.2) for _ in range(8)]
    retried = submit_diagnostics(admin, steps=1, step_seconds=0, fail_attempts=1)
    dead = submit_diagnostics(admin, steps=1, step_seconds=0, fail_attempts=1, failure="permanent")
    for job_id in [*ids, retried]:
        stack.wait_job(job_id, {"succeeded"})
    stack.wait_job(dead, {"dead"})
    after = _scrape(stack)

    def delta(name: str, **labels: str) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    succeeded = {"task": task, "queue": "default", "outcome": "succeeded"}
    assert delta("conveyor_jobs_total", **succeeded) == 9
    assert delta("conveyor_jobs_total", task=task, queue="default", outcome="retried") == 1
    assert delta("conveyor_jobs_total", task=task, queue="default", outcome="dead") == 1
    assert delta("conveyor_dead_letters_total", task=task, reason="permanent_error") == 1
    assert delta("conveyor_job_runtime_seconds_count", task=task, queue="default") == 11
    assert delta("conveyor_job_wait_seconds_count", queue="default") == 11
    # Eight 0.2 s jobs on two pool processes: both processes ran some, and both are counted.
    metric_files = list((stack.tmp / "data" / "metrics").glob("counter_*.db"))
    assert len(metric_files) >= 3, metric_files  # the API and at least two pool children
    assert _value(after, "conveyor_jobs", queue="default", state="succeeded") >= 9
    assert _value(after, "conveyor_queue_depth", queue="email") == 0
    posted = _value(
        after,
        "conveyor_http_requests_total",
        method="POST",
        route="/api/v1/diagnostics/jobs",
        status="202",
    )
    assert posted >= 10


def test_broker_outage_is_503_and_job_is_not_left_queued(stack: Stack) -> None:
    with extra_api(stack, "api-no-broker", CONVEYOR_BROKER_URL="redis://127.0.0.1:1/0") as base:
        headers = {"Authorization": f"Bearer {stack.admin_key}"}
        response = httpx.post(
            f"{base}/api/v1/diagnostics/jobs", json={"steps": 1}, headers=headers, timeout=60
        )
        assert response.status_code == 503, response.text
        assert "broker is unavailable" in response.json()["detail"]
        assert response.headers["retry-after"] == "5"
        ready = httpx.get(f"{base}/health/ready", timeout=30)
        assert ready.status_code == 503
        assert "broker" in ready.json()["checks"]
        failed = httpx.get(
            f"{base}/api/v1/jobs", params={"state": "failed"}, headers=headers, timeout=10
        ).json()["items"]
        assert failed, "the refused job should be recorded as failed, not left queued"
        assert failed[0]["error"]["type"] == "OperationalError"


@pytest.mark.one_database  # the worker's log format
def test_task_logs_are_json_with_job_id_and_wait_event(stack: Stack, admin: httpx.Client) -> None:
    saved = dict(stack.env)
    stack.worker.stop()
    stack.env.update(
        {"CONVEYOR_LOG_JSON": "true", "CONVEYOR_QUEUE_WAIT_THRESHOLD_SECONDS": "0.0001"}
    )
    log_start = stack.worker.log_path.stat().st_size if stack.worker.log_path.exists() else 0
    try:
        stack.start_worker()
        job_id = submit_diagnostics(admin, steps=1, step_seconds=0)
        stack.wait_job(job_id, {"succeeded"})
        with stack.worker.log_path.open() as handle:
            handle.seek(log_start)
            lines = [json.loads(line) for line in handle if line.startswith("{")]
        mine = [line for line in lines if line.get("job_id") == job_id]
        assert mine, "no JSON log line carried the job id"
        assert all(line["task_name"] == "conveyor.diagnostics.run" for line in mine)
        assert any(line["event"] == "queue.wait_exceeded" for line in mine)
    finally:
        stack.worker.stop()
        stack.env.clear()
        stack.env.update(saved)
        stack.start_worker()
