"""The dashboard's doors, over plain HTTP: sessions, cookies, CSRF, scoping and live streams."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text as sa_text

from conveyor.core import api_keys, db
from conveyor.core.jobs import Submission, submit
from tests.integration.conftest import Stack, api_answers, free_port, submit_diagnostics, wait_for

PAGE = {"accept": "text/html"}


def sign_in(stack: Stack, key: str, target: str = "/dashboard/") -> httpx.Client:
    browser = httpx.Client(base_url=stack.api_url, timeout=30)
    form = browser.get("/dashboard/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
    assert token is not None
    answer = browser.post(
        "/dashboard/login", data={"api_key": key, "csrf_token": token.group(1), "next": target}
    )
    assert answer.status_code == 303, answer.text
    return browser


def csrf_of(page: httpx.Response) -> str:
    found = re.search(r'<meta name="csrf-token" content="([^"]+)"', page.text)
    assert found is not None
    return found.group(1)


@pytest.fixture
def admin_browser(stack: Stack) -> Iterator[httpx.Client]:
    with closing(sign_in(stack, stack.admin_key)) as browser:
        yield browser


def test_the_session_cookie_is_httponly_strict_and_scoped(stack: Stack) -> None:
    with httpx.Client(base_url=stack.api_url, timeout=30) as browser:
        form = browser.get("/dashboard/login")
        token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
        assert token is not None
        answer = browser.post(
            "/dashboard/login",
            data={"api_key": stack.admin_key, "csrf_token": token.group(1), "next": "/dashboard/"},
        )
    cookie = answer.headers["set-cookie"].lower()
    assert "conveyor_dashboard=" in cookie
    assert "httponly" in cookie
    assert "samesite=strict" in cookie
    assert "path=/dashboard/" in cookie
    # Served over plain HTTP here, so not Secure (a browser would drop it).
    assert "secure" not in cookie
    assert stack.admin_key not in answer.text


def test_signing_in_needs_the_forms_token_and_a_valid_key(stack: Stack) -> None:
    with httpx.Client(base_url=stack.api_url, timeout=30) as browser:
        no_form = browser.post("/dashboard/login", data={"api_key": stack.admin_key})
        assert no_form.status_code == 403
        assert "conveyor_dashboard=" not in no_form.headers.get("set-cookie", "")
        form = browser.get("/dashboard/login")
        token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
        assert token is not None
        wrong = browser.post(
            "/dashboard/login", data={"api_key": "cvk_nope.nope", "csrf_token": token.group(1)}
        )
        assert wrong.status_code == 401
        assert "not valid" in wrong.text


def test_after_sign_in_it_goes_only_to_dashboard_pages(stack: Stack) -> None:
    for target, expected in (
        ("/dashboard/jobs", "/dashboard/jobs"),
        ("https://evil.example/", "/dashboard/"),
        ("/dashboard//evil.example", "/dashboard/"),
        ("/api/v1/jobs", "/dashboard/"),
    ):
        with httpx.Client(base_url=stack.api_url, timeout=30) as browser:
            form = browser.get("/dashboard/login")
            token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
            assert token is not None
            answer = browser.post(
                "/dashboard/login",
                data={"api_key": stack.admin_key, "csrf_token": token.group(1), "next": target},
            )
            assert answer.headers["location"] == expected


def test_without_a_session_pages_ask_to_sign_in_and_the_rest_is_refused(stack: Stack) -> None:
    with httpx.Client(base_url=stack.api_url, timeout=30) as anonymous:
        page = anonymous.get("/dashboard/jobs?state=queued", headers=PAGE)
        assert page.status_code == 303
        assert (
            page.headers["location"] == "/dashboard/login?next=%2Fdashboard%2Fjobs%3Fstate%3Dqueued"
        )
        for path in ("/dashboard/", "/dashboard/queues", "/dashboard/live/jobs"):
            assert anonymous.get(path).status_code == 401, path
        assert anonymous.post("/dashboard/queues/default/pause").status_code == 401


def test_a_revoked_key_ends_its_sessions_and_sign_out_ends_the_cookie(stack: Stack) -> None:
    with db.session_scope() as session:
        made = api_keys.create_key(session, "short-lived", owner="temp", admin=True)
    with closing(sign_in(stack, made.plaintext)) as browser:
        assert browser.get("/dashboard/jobs", headers=PAGE).status_code == 200
        with db.session_scope() as session:
            api_keys.revoke(session, made.record.id)
        assert browser.get("/dashboard/jobs", headers=PAGE).status_code == 303

    browser = sign_in(stack, stack.admin_key)
    cookie = browser.cookies.get("conveyor_dashboard")
    page = browser.get("/dashboard/jobs", headers=PAGE)
    assert browser.post("/dashboard/logout", data={"csrf_token": csrf_of(page)}).status_code == 303
    browser.close()
    with httpx.Client(base_url=stack.api_url, timeout=30) as replay:
        replay.cookies.set("conveyor_dashboard", cookie or "", path="/dashboard/")
        assert replay.get("/dashboard/jobs").status_code == 401


def test_actions_without_the_csrf_token_change_nothing(
    stack: Stack, admin: httpx.Client, admin_browser: httpx.Client
) -> None:
    job_id = submit_diagnostics(admin, steps=20, step_seconds=0.5)
    refused = admin_browser.post(f"/dashboard/jobs/{job_id}/cancel")
    assert refused.status_code == 403
    assert "CSRF" in refused.text
    forged = admin_browser.post(f"/dashboard/jobs/{job_id}/cancel", data={"csrf_token": "x"})
    assert forged.status_code == 403
    assert admin.get(f"/api/v1/jobs/{job_id}").json()["state"] != "cancelled"
    page = admin_browser.get(f"/dashboard/jobs/{job_id}", headers=PAGE)
    done = admin_browser.post(
        f"/dashboard/jobs/{job_id}/cancel", headers={"x-csrf-token": csrf_of(page)}
    )
    assert done.status_code == 303
    assert admin.get(f"/api/v1/jobs/{job_id}").json()["state"] == "cancelled"


def test_a_plain_key_sees_only_its_owners_jobs(stack: Stack, admin: httpx.Client) -> None:
    theirs = submit_diagnostics(admin, steps=1, step_seconds=0, tags=["scoping"])
    mine = submit(Submission(task_name="conveyor.diagnostics.run", owner="carol")).id
    with closing(sign_in(stack, stack.key_for("carol"))) as carol:
        listing = carol.get("/dashboard/jobs", headers=PAGE)
        assert mine[:8] in listing.text
        assert theirs[:8] not in listing.text
        asked = carol.get("/dashboard/jobs", params={"owner": "ops"}, headers=PAGE)
        assert theirs[:8] not in asked.text
        assert carol.get(f"/dashboard/jobs/{theirs}", headers=PAGE).status_code == 404
        assert carol.get("/dashboard/dead-letters", headers=PAGE).status_code == 403
        assert carol.get("/dashboard/live/queues").status_code == 403


def test_the_live_stream_sends_the_region_again_when_it_changes(
    stack: Stack, admin: httpx.Client, admin_browser: httpx.Client
) -> None:
    job_id = submit_diagnostics(admin, steps=6, step_seconds=0.4)
    states: list[str] = []
    with admin_browser.stream("GET", f"/dashboard/live/job?job_id={job_id}") as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        for line in stream.iter_lines():
            found = re.search(r'class="state state-(\w+)"', line)
            if found and (not states or states[-1] != found.group(1)):
                states.append(found.group(1))
            if states and states[-1] == "succeeded":
                break
    assert states[-1] == "succeeded"
    assert len(states) >= 2, states


def test_jobs_are_found_by_tag_through_the_api_and_the_dashboard(
    stack: Stack, admin: httpx.Client, admin_browser: httpx.Client
) -> None:
    tagged = submit_diagnostics(admin, steps=1, step_seconds=0, tags=["invoice-42"])
    submit_diagnostics(admin, steps=1, step_seconds=0)
    listed = admin.get("/api/v1/jobs", params={"tag": "invoice-42"}).json()["items"]
    assert [item["id"] for item in listed] == [tagged]
    page = admin_browser.get("/dashboard/jobs", params={"tag": "invoice-42"}, headers=PAGE)
    assert page.text.count('data-job-id="') == 1
    assert f'data-job-id="{tagged}"' in page.text
    detail = admin_browser.get(f"/dashboard/jobs/{tagged}", headers=PAGE)
    assert ">invoice-42</a>" in detail.text
    wait_for(lambda: admin.get(f"/api/v1/jobs/{tagged}").json()["state"] == "succeeded", 30, "job")


def test_conveyor_api_stops_at_once_with_a_dashboard_stream_open(
    stack: Stack, tmp_path: Path
) -> None:
    port = free_port()
    log = (tmp_path / "api.log").open("wb")
    api = subprocess.Popen(
        [sys.executable, "-c", "from conveyor.cli import main; main()", "api", "--port", str(port)],
        env=stack.env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: api_answers(base), 30, "conveyor api to answer")
        browser = httpx.Client(base_url=base, timeout=30)
        form = browser.get("/dashboard/login")
        token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
        assert token is not None
        browser.post(
            "/dashboard/login", data={"api_key": stack.admin_key, "csrf_token": token.group(1)}
        )
        with browser.stream("GET", "/dashboard/live/queues") as stream:
            lines = stream.iter_lines()
            assert next(lines).startswith("event: update")
            api.send_signal(signal.SIGINT)
            started = time.monotonic()
            # The stream ends by itself: the server does not wait on it, nor cut it.
            for _ in lines:
                pass
        # Stopped by Ctrl-C as any command is (130), with nothing left to wait on.
        assert api.wait(15) in (0, 130)
        assert time.monotonic() - started < 10
    finally:
        if api.poll() is None:
            api.kill()
        log.close()
    assert "Traceback" not in (tmp_path / "api.log").read_text(errors="replace")


def test_on_postgresql_searching_messages_has_a_trigram_index(
    stack: Stack, database_url: str
) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("a PostgreSQL index")
    with db.session_scope() as session:
        found = session.execute(
            sa_text("SELECT indexdef FROM pg_indexes WHERE indexname = :name"),
            {"name": "ix_conveyor_dead_letters_message_trgm"},
        ).scalar()
    assert found is not None
    assert "gin_trgm_ops" in found
