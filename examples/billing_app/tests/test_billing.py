"""The app's own task, on its own queue, run by a real worker, watched through its routes."""

from __future__ import annotations

from fastapi.testclient import TestClient

from conveyor.testing import Worker, drain, wait_for_job


def sign_up(client: TestClient, **body: object) -> dict[str, str]:
    answer = client.post("/users", json={"name": "Ada", **body})
    assert answer.status_code == 201
    return {"Authorization": f"Bearer {answer.json()['token']}"}


def test_an_invoice_is_sent_by_a_worker_on_the_billing_queue(
    client: TestClient, conveyor_worker: Worker
) -> None:
    ada = sign_up(client, billing_email="ada@example.com")
    answer = client.post("/me/invoices", json={"amount_cents": 1200}, headers=ada)
    assert answer.status_code == 202
    job_id = answer.json()["job_id"]

    job = wait_for_job(job_id)
    assert job.state == "succeeded"
    assert job.queue == "billing"
    # Nothing left waiting or running on the app's queue.
    assert drain("billing") >= 1

    # The job, through Conveyor's routes mounted in the app, with the app's own sign-in.
    seen = client.get(f"/conveyor/api/v1/jobs/{job_id}", headers=ada).json()
    assert seen["state"] == "succeeded"
    assert seen["result"] == {"sent_to": "ada@example.com", "amount_cents": 1200}
    # Another user does not see it; nobody signed in gets a 401.
    grace = sign_up(client, name="Grace")
    assert client.get(f"/conveyor/api/v1/jobs/{job_id}", headers=grace).status_code == 404
    assert client.get(f"/conveyor/api/v1/jobs/{job_id}").status_code == 401


def test_a_permanent_failure_is_a_dead_letter_an_admin_replays(
    client: TestClient, conveyor_worker: Worker
) -> None:
    bob = sign_up(client, name="Bob")  # no billing email yet
    job_id = client.post("/me/invoices", json={"amount_cents": 500}, headers=bob).json()["job_id"]
    assert wait_for_job(job_id).state == "dead"

    admin = sign_up(client, name="Admin", is_admin=True)
    letters = client.get("/conveyor/api/v1/dead-letters", headers=admin).json()["items"]
    letter = next(item for item in letters if item["job_id"] == job_id)
    assert "no billing email" in letter["error"]["message"]
    # Users cannot act on dead letters; the app's admins can.
    assert client.get("/conveyor/api/v1/dead-letters", headers=bob).status_code == 403

    client.put("/me/billing-email", headers={**bob, "email": "bob@example.com"})
    replayed = client.post(f"/conveyor/api/v1/dead-letters/{letter['id']}/replay", headers=admin)
    assert replayed.status_code == 202
    assert wait_for_job(replayed.json()["job_id"]).state == "succeeded"
    # Its URL is under the prefix the app mounted Conveyor at; the owner follows it.
    followed = client.get(replayed.json()["url"], headers=bob)
    assert followed.json()["state"] == "succeeded"


def test_bad_input_is_refused_before_anything_is_queued(client: TestClient) -> None:
    ada = sign_up(client, billing_email="ada@example.com")
    answer = client.post("/me/invoices", json={"amount_cents": -5}, headers=ada)
    assert answer.status_code == 422


def test_the_dashboard_is_mounted_under_the_apps_prefix(client: TestClient) -> None:
    form = client.get("/conveyor/dashboard/login")
    assert form.status_code == 200
    assert 'action="/conveyor/dashboard/login"' in form.text
    assert 'href="/conveyor/dashboard/static/dashboard.css"' in form.text
    # Nothing behind it without a dashboard session, whatever the app's own sign-in says.
    ada = sign_up(client)
    assert client.get("/conveyor/dashboard/jobs", headers=ada).status_code == 401
