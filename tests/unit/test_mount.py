"""Conveyor's router mounted in an app of its own, with the app's own authentication
(SQLite ledger; nothing here publishes, so no broker is needed)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import pytest
from fastapi import FastAPI, Header, HTTPException
from fastapi.testclient import TestClient

from conveyor import Caller, Conveyor
from conveyor.core import api_keys, db, ledger
from conveyor.core.models import Base
from conveyor.core.settings import get_settings

USERS = {"t-ada": Caller(owner="user:ada"), "t-root": Caller(owner="user:root", is_admin=True)}


def signed_in(x_token: Annotated[str, Header()] = "") -> Caller:
    caller = USERS.get(x_token)
    if caller is None:
        raise HTTPException(401, "sign in first")
    return caller


@pytest.fixture
def ledger_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("CONVEYOR_DATABASE_URL", f"sqlite:///{tmp_path / 'app.db'}")
    monkeypatch.setenv("CONVEYOR_REDIS_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setenv("CONVEYOR_API_RATE_LIMIT_PER_MINUTE", "0")
    monkeypatch.setenv("CONVEYOR_API_AUTH_FAILURES_PER_MINUTE", "0")
    get_settings.cache_clear()
    Base.metadata.create_all(db.get_engine())
    with db.session_scope() as session:
        for job_id, owner in (("job-ada", "user:ada"), ("job-bob", "user:bob")):
            ledger.create_job(
                session, ledger.NewJob(id=job_id, name="app.task", queue="default", owner=owner)
            )
    yield
    get_settings.cache_clear()


def app_with(conveyor: Conveyor) -> FastAPI:
    app = FastAPI(lifespan=conveyor.lifespan)

    @app.get("/own")
    def own_route() -> dict[str, str]:
        return {"mine": "yes"}

    app.include_router(conveyor.router, prefix="/jobs")
    return app


def test_the_apps_own_sign_in_scopes_every_job_to_its_owner(ledger_db: None) -> None:
    with TestClient(app_with(Conveyor(owner=signed_in))) as client:
        ada = {"X-Token": "t-ada"}
        assert client.get("/own").json() == {"mine": "yes"}
        answer = client.get("/jobs/api/v1/jobs/job-ada", headers=ada)
        assert answer.status_code == 200
        assert answer.json()["id"] == "job-ada"
        # Another owner's job does not exist for this caller.
        assert client.get("/jobs/api/v1/jobs/job-bob", headers=ada).status_code == 404
        listed = client.get("/jobs/api/v1/jobs", headers=ada).json()["items"]
        assert [job["id"] for job in listed] == ["job-ada"]
        # The app's own 401, and admin-only routes refuse a plain user.
        assert client.get("/jobs/api/v1/jobs/job-ada").status_code == 401
        assert client.get("/jobs/api/v1/dead-letters", headers=ada).status_code == 403
        root = {"X-Token": "t-root"}
        assert client.get("/jobs/api/v1/jobs/job-bob", headers=root).status_code == 200
        assert client.get("/jobs/api/v1/dead-letters", headers=root).status_code == 200


def test_an_api_key_means_nothing_when_the_app_signs_callers_in(ledger_db: None) -> None:
    with db.session_scope() as session:
        key = api_keys.create_key(session, "root", owner="root", admin=True).plaintext
    with TestClient(app_with(Conveyor(owner=signed_in))) as client:
        answer = client.get("/jobs/api/v1/jobs/job-ada", headers={"Authorization": f"Bearer {key}"})
        assert answer.status_code == 401


def test_an_owner_dependency_returning_nothing_is_refused(ledger_db: None) -> None:
    def nobody() -> str:
        return ""

    with TestClient(app_with(Conveyor(owner=nobody))) as client:
        answer = client.get("/jobs/api/v1/jobs/job-ada")
        assert answer.status_code == 401
        assert answer.json()["detail"] == "not signed in"


def test_a_plain_owner_string_is_a_caller_who_is_not_admin(ledger_db: None) -> None:
    def bob() -> str:
        return "user:bob"

    with TestClient(app_with(Conveyor(owner=bob))) as client:
        assert client.get("/jobs/api/v1/jobs/job-bob").status_code == 200
        assert client.get("/jobs/api/v1/jobs/job-ada").status_code == 404
        assert client.get("/jobs/api/v1/dead-letters").status_code == 403


def test_without_an_owner_dependency_conveyors_api_keys_sign_callers_in(ledger_db: None) -> None:
    with db.session_scope() as session:
        key = api_keys.create_key(session, "ada", owner="user:ada").plaintext
    with TestClient(app_with(Conveyor())) as client:
        headers = {"Authorization": f"Bearer {key}"}
        assert client.get("/jobs/api/v1/jobs/job-ada", headers=headers).status_code == 200
        assert client.get("/jobs/api/v1/jobs/job-bob", headers=headers).status_code == 404
        assert client.get("/jobs/api/v1/jobs/job-ada").status_code == 401


def test_signed_requests_from_other_systems_stay_outside_the_apps_sign_in(ledger_db: None) -> None:
    with TestClient(app_with(Conveyor(owner=signed_in))) as client:
        # Reaches the route, which checks the gateway's signature (no secret set here: 503),
        # instead of the app's sign-in answering 401.
        answer = client.post("/jobs/api/v1/payments/gateway-events", content=b"{}")
        assert answer.status_code == 503
        assert "sign in first" not in answer.text


def test_settings_given_in_code_become_the_processes_settings(tmp_path: Path) -> None:
    from conveyor.core.settings import Settings, use_settings

    given = Settings(
        redis_url="redis://127.0.0.1:1/3",
        database_url=f"sqlite:///{tmp_path / 'given.db'}",
        queues="billing=app.billing.*",
    )
    try:
        conveyor = Conveyor(given)
        assert get_settings() is given
        assert conveyor.settings is given
        from conveyor.core.celery_app import queue_for

        assert queue_for("app.billing.charge") == "billing"
    finally:
        use_settings(None)
    assert get_settings() is not given


def test_urls_in_answers_follow_the_prefix_the_router_is_mounted_at(ledger_db: None) -> None:
    app = app_with(Conveyor(owner=signed_in))
    assert app.url_path_for("conveyor.job", job_id="job-ada") == "/jobs/api/v1/jobs/job-ada"


def test_an_apps_users_see_their_jobs_error_but_never_its_traceback(ledger_db: None) -> None:
    with db.session_scope() as session:
        ledger.mark_failed(session, "job-ada", ValueError("bad order"), "Traceback: /srv/app.py")
        key = api_keys.create_key(session, "ada", owner="user:ada").plaintext
    with TestClient(app_with(Conveyor(owner=signed_in))) as client:
        error = client.get("/jobs/api/v1/jobs/job-ada", headers={"X-Token": "t-ada"}).json()
        assert error["error"] == {"type": "ValueError", "message": "bad order", "traceback": None}
        root = client.get("/jobs/api/v1/jobs/job-ada", headers={"X-Token": "t-root"}).json()
        assert root["error"]["traceback"] == "Traceback: /srv/app.py"
    with TestClient(app_with(Conveyor())) as client:
        # An API key belongs to a developer or a service: it sees the traceback.
        shown = client.get("/jobs/api/v1/jobs/job-ada", headers={"Authorization": f"Bearer {key}"})
        assert shown.json()["error"]["traceback"] == "Traceback: /srv/app.py"
