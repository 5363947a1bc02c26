"""A killed worker loses nothing; readiness tells the truth when the worker is gone."""

from __future__ import annotations

import sys

import httpx

from tests.integration.conftest import Process, Stack, free_port, submit_diagnostics, wait_for


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

    stack.start_worker()
    # Redis hands the unacknowledged message out again once its visibility timeout passes.
    job = stack.wait_job(job_id, {"succeeded", "dead"}, timeout=90)
    assert job["state"] == "succeeded"
    assert job["attempts"] == 2
    assert job["progress"]["current"] == 12
    assert job["result"] == {"steps": 12, "attempt": 1}


def test_readiness_fails_without_worker(stack: Stack, admin: httpx.Client) -> None:
    ready = httpx.get(f"{stack.api_url}/health/ready", timeout=10)
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"] == {"database": "ok", "broker": "ok", "workers": "ok"}

    stack.worker.stop()
    try:
        down = httpx.get(f"{stack.api_url}/health/ready", timeout=10)
        assert down.status_code == 503
        assert "workers" in down.json()["checks"]
        assert "database" not in down.json()["checks"]
        assert httpx.get(f"{stack.api_url}/health/live", timeout=5).status_code == 200
    finally:
        stack.start_worker()
    assert httpx.get(f"{stack.api_url}/health/ready", timeout=10).status_code == 200


def test_metrics_expose_ledger_and_http(stack: Stack, admin: httpx.Client) -> None:
    job_id = submit_diagnostics(admin, steps=1, step_seconds=0)
    stack.wait_job(job_id, {"succeeded"})
    text = httpx.get(f"{stack.api_url}/metrics", timeout=10).text
    assert 'conveyor_jobs{queue="default",state="succeeded"}' in text
    assert 'conveyor_queue_depth{queue="email"}' in text
    assert (
        'conveyor_http_requests_total{method="POST",route="/api/v1/diagnostics/jobs",status="202"}'
        in text
    )


def test_broker_outage_is_503_and_job_is_not_left_queued(stack: Stack) -> None:
    port = free_port()
    env = {**stack.env, "CONVEYOR_BROKER_URL": "redis://127.0.0.1:1/0"}
    api = Process(
        "api-no-broker",
        [
            sys.executable, "-m", "uvicorn", "--factory", "conveyor.api.app:create_app",
            "--host", "127.0.0.1", "--port", str(port),
        ],
        env,
        stack.tmp / "api-no-broker.log",
    )  # fmt: skip
    api.start()
    base = f"http://127.0.0.1:{port}"
    try:

        def up() -> bool:
            try:
                return httpx.get(f"{base}/health/live", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, 30, "the API without a broker to start")
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
    finally:
        api.stop()
