"""The dashboard in a real browser, against the real stack: sign-in, live pages, clicks that
replay, pause and resume, who sees what, refusals, accessibility and screenshots.

A replayed diagnostics job runs with the same arguments from attempt 1 again, so it fails
again as its letter did: the bulk replay checks that each replay ran as a new job linked to its
letter. The single replay uses a job that needs a file, made between the failure and the
click, so its replay succeeds.
"""

from __future__ import annotations

import contextlib
import itertools
import re
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from conveyor.core import api_keys, db
from conveyor.core.celery_app import get_celery
from conveyor.core.jobs import Submission, submit
from tests.integration.conftest import Stack, dead_letter_of, submit_diagnostics, wait_for
from tests.integration.dashboard_browser import (
    WAIT,
    axe_violations,
    chromium,
    http_session,
    mark_document,
    same_document,
    screenshot,
    sign_in,
)

# Without Playwright the browser fixture skips; the HTTP-only tests still run.
with contextlib.suppress(ImportError):
    from playwright.sync_api import Browser, BrowserContext, Locator, Page, expect

pytestmark = pytest.mark.integration

MS = WAIT * 1000
ACTIVE = {"queued", "started", "retrying"}
DIAGNOSTICS = "conveyor.diagnostics.run"
NEEDS_FILE = "tests.dashboard.needs_file"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


@pytest.fixture(scope="module")
def dashboard(stack: Stack) -> str:
    return f"{stack.api_url}/dashboard"


@pytest.fixture(scope="module")
def admin_context(browser: Browser, dashboard: str, stack: Stack) -> Iterator[BrowserContext]:
    """Signed in once with the admin key, for every test that does not sign out."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    sign_in(page, dashboard, stack.admin_key)
    page.close()
    yield context
    context.close()


@pytest.fixture
def page(admin_context: BrowserContext) -> Iterator[Page]:
    opened = admin_context.new_page()
    yield opened
    opened.close()


def job_state(page: Page) -> Locator:
    return page.locator("#job-state .state")


def status_of(page: Page, url: str) -> int:
    response = page.goto(url)
    assert response is not None, url
    return response.status


def opened_job_id(page: Page) -> str:
    found = re.search(r"/dashboard/jobs/([^/?#]+)$", page.url)
    assert found is not None, page.url
    return found.group(1)


def test_sign_in_shows_the_overview_and_sign_out_ends_the_session(
    browser: Browser, dashboard: str, stack: Stack
) -> None:
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(f"{dashboard}/jobs")
        expect(page).to_have_url(re.compile(r"/dashboard/login\?next=%2Fdashboard%2Fjobs$"))
        page.locator("#api_key").fill(stack.admin_key)
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url(f"{dashboard}/jobs", timeout=MS)  # back where it was sent from
        page.goto(f"{dashboard}/")
        expect(page.get_by_role("heading", level=1)).to_have_text("Overview")
        expect(page.locator(".chart")).to_have_count(4)
        expect(page.locator(".chart canvas")).to_have_count(4, timeout=MS)  # uPlot drew them
        (cookie,) = [c for c in context.cookies() if c["name"] == "conveyor_dashboard"]
        assert (cookie["httpOnly"], cookie["sameSite"], cookie["path"]) == (
            True, "Strict", "/dashboard/",
        )  # fmt: skip

        page.get_by_role("button", name="Sign out").click()
        page.wait_for_url(f"{dashboard}/login", timeout=MS)
        expect(page.locator("#api_key")).to_be_visible()
        assert not [c for c in context.cookies() if c["name"] == "conveyor_dashboard"]
        page.goto(f"{dashboard}/")
        expect(page).to_have_url(re.compile(r"/dashboard/login\?next="))
    finally:
        context.close()
    # A copy of the old cookie is worth nothing: the session behind it is gone.
    old = {"cookie": f"conveyor_dashboard={cookie['value']}"}
    with httpx.Client(base_url=stack.api_url, timeout=30) as anonymous:
        as_page = anonymous.get("/dashboard/", headers={**old, "accept": "text/html"})
        assert as_page.status_code == 303
        assert as_page.headers["location"].startswith("/dashboard/login?next=")
        assert anonymous.get("/dashboard/live/overview", headers=old).status_code == 401


# Every swap of the live region records the bar's value, so no step is missed between polls.
RECORD_PROGRESS = """() => {
  window.__progress = [];
  const read = () => {
    const bar = document.querySelector('#job-progress progress');
    if (bar) { window.__progress.push(bar.value); }
  };
  read();
  new MutationObserver(read).observe(document.getElementById('live'),
                                     {childList: true, subtree: true});
}"""


def test_job_progress_moves_live_without_a_reload(
    page: Page, dashboard: str, admin: httpx.Client
) -> None:
    job_id = submit_diagnostics(admin, steps=8, step_seconds=0.5)
    page.goto(f"{dashboard}/jobs/{job_id}")
    mark_document(page)
    page.evaluate(RECORD_PROGRESS)
    expect(job_state(page)).to_have_text("succeeded", timeout=MS)
    bar = page.locator("#job-progress progress")
    expect(bar).to_have_attribute("value", "8")
    expect(bar).to_have_attribute("max", "8")
    seen: list[float] = page.evaluate("window.__progress")
    rises = sum(1 for before, after in itertools.pairwise(seen) if after > before)
    assert rises >= 2, f"the bar moved {rises} times: {seen}"
    assert same_document(page), "the page reloaded"


def test_a_dead_letter_appears_live_and_replays_by_click(
    page: Page, dashboard: str, admin: httpx.Client, tmp_path: Path
) -> None:
    page.goto(f"{dashboard}/dead-letters")
    mark_document(page)
    # The letter arrives after the page is open: a job that needs a file not made yet.
    missing = tmp_path / "ready.txt"
    job_id = submit(Submission(task_name=NEEDS_FILE, kwargs={"path": str(missing)}, owner="ops")).id
    row = page.locator(f'tr[data-job-id="{job_id}"]')
    expect(row).to_be_visible(timeout=MS)
    assert same_document(page), "the row came by a reload, not live"
    expect(row).to_contain_text("does not exist")
    letter_id = row.get_attribute("data-letter-id")

    missing.write_text("made by the operator")  # the cause, fixed
    row.get_by_role("button", name="Replay").click()
    page.wait_for_url(re.compile(r"/dashboard/jobs/[^/]+$"), timeout=MS)
    replay_id = opened_job_id(page)
    assert replay_id != job_id
    expect(page.locator(f'#live a[href$="/jobs/{job_id}"]')).to_be_visible()  # "Replay of"
    expect(job_state(page)).to_have_text("succeeded", timeout=MS)
    replay = admin.get(f"/api/v1/jobs/{replay_id}").json()
    assert (replay["replay_of"], replay["state"]) == (job_id, "succeeded")
    assert replay["result"] == "found"
    letter = admin.get(f"/api/v1/dead-letters/{letter_id}").json()
    assert letter["replayed_job_id"] == replay_id


def test_bulk_replay_of_a_filtered_set_of_twenty(
    stack: Stack, page: Page, dashboard: str, admin: httpx.Client
) -> None:
    owner = f"bulk-{uuid.uuid4().hex[:8]}"
    with db.session_scope() as session:
        key = api_keys.create_key(session, owner, owner=owner, admin=True).plaintext
    # The form takes whole minutes; the owner is new, so nothing older of it can match.
    since = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M")
    permanent = {"steps": 1, "step_seconds": 0, "fail_attempts": 1, "failure": "permanent"}
    with stack.client(key) as mine:
        wanted = [submit_diagnostics(mine, **permanent) for _ in range(20)]
        # Same owner, other reason: their retries run out (retries_exhausted).
        exhausted = [submit_diagnostics(mine, steps=1, step_seconds=0, fail_attempts=6)]
        exhausted.append(submit_diagnostics(mine, steps=1, step_seconds=0, fail_attempts=6))
    other_owner = [submit_diagnostics(admin, **permanent) for _ in range(3)]
    letters = {
        job_id: dead_letter_of(stack, admin, job_id)["id"]
        for job_id in wanted + exhausted + other_owner
    }

    page.goto(f"{dashboard}/dead-letters")
    page.locator("#d-task").fill(DIAGNOSTICS)
    page.locator("#d-owner").fill(owner)
    page.locator("#d-reason").fill("permanent_error")
    page.locator("#d-from").fill(since)
    page.get_by_role("button", name="Search").click()
    page.wait_for_url(re.compile(r"/dashboard/dead-letters\?"), timeout=MS)
    rows = page.locator("tr[data-letter-id]")
    expect(rows).to_have_count(20)
    shown = {row.get_attribute("data-job-id") for row in rows.all()}
    assert shown == set(wanted)

    page.get_by_role("link", name="Replay all matching…").click()
    page.wait_for_url(re.compile(r"/dashboard/dead-letters/replay-matching\?"), timeout=MS)
    expect(page.locator("#replay-count strong")).to_have_text("20")
    page.get_by_role("button", name="Replay 20 dead letters").click()
    page.wait_for_url(re.compile(r"/dashboard/jobs/[^/]+$"), timeout=MS)
    expect(job_state(page)).to_have_text("succeeded", timeout=MS)
    bar = page.locator("#job-progress progress")
    expect(bar).to_have_attribute("value", "20")
    expect(bar).to_have_attribute("max", "20")

    replayed = {
        job_id: admin.get(f"/api/v1/dead-letters/{letter_id}").json()["replayed_job_id"]
        for job_id, letter_id in letters.items()
    }
    assert all(replayed[job_id] for job_id in wanted), replayed
    assert not [job_id for job_id in exhausted + other_owner if replayed[job_id]]
    assert len({replayed[job_id] for job_id in wanted}) == 20  # one new job each


def consumes(queue: str) -> bool:
    """Whether any worker consumes the queue, asked of the workers themselves."""
    replies = get_celery().control.inspect(timeout=1).active_queues() or {}
    return any(queue in [item["name"] for item in queues] for queues in replies.values())


def test_pausing_a_queue_by_click_holds_its_jobs_until_resumed(
    admin_context: BrowserContext, dashboard: str, admin: httpx.Client
) -> None:
    queues = admin_context.new_page()
    job_page = admin_context.new_page()
    try:
        queues.goto(f"{dashboard}/queues")
        queues.get_by_role("button", name="Pause default").click()
        queues.wait_for_url(f"{dashboard}/queues", timeout=MS)
        expect(queues.locator('tr[data-queue="default"] .state')).to_have_text("paused")
        wait_for(lambda: not consumes("default"), 20, "the worker to stop consuming default")

        job_id = submit_diagnostics(admin, steps=1, step_seconds=0)
        job_page.goto(f"{dashboard}/jobs/{job_id}")
        job_page.bring_to_front()
        held_until = time.monotonic() + 3
        while time.monotonic() < held_until:
            expect(job_state(job_page)).to_have_text("queued")
            job_page.wait_for_timeout(200)  # a deadline poll, not a wait for an outcome

        # Headless Chromium runs no animation frames in a background tab: clicks wait on them.
        queues.bring_to_front()
        queues.get_by_role("button", name="Resume default").click()
        expect(queues.locator('tr[data-queue="default"] .state')).to_have_text("running")
        job_page.bring_to_front()
        expect(job_state(job_page)).to_have_text("succeeded", timeout=MS)
    finally:
        queues.close()
        job_page.close()
        # Other tests share this worker: never leave the queue paused.
        assert admin.post("/api/v1/queues/default/resume").status_code == 200


def test_a_plain_key_sees_only_its_own_jobs(
    browser: Browser, dashboard: str, stack: Stack, admin: httpx.Client
) -> None:
    viewer = f"viewer-{uuid.uuid4().hex[:8]}"
    key = stack.key_for(viewer)
    kwargs = {"steps": 1, "step_seconds": 0}
    own = submit(Submission(task_name=DIAGNOSTICS, kwargs=kwargs, owner=viewer))
    other = submit_diagnostics(admin, **kwargs)
    context = browser.new_context()
    try:
        page = context.new_page()
        sign_in(page, dashboard, key)
        nav = page.get_by_role("navigation", name="Dashboard")
        expect(nav.get_by_role("link", name="Jobs")).to_be_visible()
        expect(nav.get_by_role("link", name="Dead letters")).to_have_count(0)
        # Asking for another owner's jobs changes nothing for a plain key.
        page.goto(f"{dashboard}/jobs?owner=ops")
        rows = page.locator("tr[data-job-id]")
        expect(rows).to_have_count(1)
        assert rows.first.get_attribute("data-job-id") == own.id

        assert status_of(page, f"{dashboard}/jobs/{other}") == 404
        expect(page.get_by_role("heading", level=1)).to_have_text("Not found")
        assert status_of(page, f"{dashboard}/jobs/{own.id}") == 200
        assert status_of(page, f"{dashboard}/dead-letters") == 403
        expect(page.get_by_role("heading", level=1)).to_have_text("Not allowed")
    finally:
        context.close()


def queue_paused(admin: httpx.Client, name: str) -> bool:
    items = admin.get("/api/v1/queues").json()["items"]
    return bool(next(item for item in items if item["name"] == name)["paused"])


PAGES = [
    "/", "/jobs", "/jobs/{job}", "/queues", "/workers", "/dead-letters", "/dead-letters/{letter}",
    "/dead-letters/replay-matching", "/schedules", "/webhooks", "/payments-review", "/live/jobs",
]  # fmt: skip


def test_refusals_without_a_session_or_a_csrf_token(stack: Stack, admin: httpx.Client) -> None:
    dead = submit_diagnostics(admin, steps=1, step_seconds=0, fail_attempts=1, failure="permanent")
    letter = dead_letter_of(stack, admin, dead)["id"]
    with httpx.Client(base_url=f"{stack.api_url}/dashboard", timeout=30) as anonymous:
        for template in PAGES:
            path = template.format(job=dead, letter=letter)
            as_page = anonymous.get(path, headers={"accept": "text/html"})
            assert as_page.status_code == 303, path
            assert as_page.headers["location"].startswith("/dashboard/login?next="), path
            as_data = anonymous.get(path, headers={"accept": "application/json"})
            assert as_data.status_code == 401, path

    running = submit_diagnostics(admin, steps=300, step_seconds=0.1)
    with http_session(stack.api_url, stack.admin_key) as (client, csrf):
        cancel = f"/dashboard/jobs/{running}/cancel"
        for refused in (
            client.post(cancel),
            client.post(cancel, data={"csrf_token": "not-the-token"}),
            client.post(cancel, headers={"x-csrf-token": "not-the-token"}),
            client.post("/dashboard/queues/default/pause"),
        ):
            assert refused.status_code == 403, refused.text
        assert admin.get(f"/api/v1/jobs/{running}").json()["state"] in ACTIVE
        assert not queue_paused(admin, "default")
        # The same action with the token goes through: the token was all that was missing.
        assert client.post(cancel, data={"csrf_token": csrf}).status_code == 303
        stack.wait_job(running, {"cancelled"})
        client.post("/dashboard/logout", data={"csrf_token": csrf})


@pytest.fixture(scope="module")
def seeded(stack: Stack) -> Iterator[dict[str, str]]:
    """Something on every page: a dead job and its letter, a schedule, a webhook endpoint."""
    with stack.client() as admin:
        dead = submit_diagnostics(
            admin, steps=2, step_seconds=0, fail_attempts=1, failure="permanent"
        )
        letter = dead_letter_of(stack, admin, dead)["id"]
        schedule = admin.post(
            "/api/v1/schedules",
            json={"name": f"nightly-{uuid.uuid4().hex[:6]}", "task": DIAGNOSTICS,
                  "kwargs": {"steps": 1}, "cron": "0 7 * * *", "timezone": "UTC"},
        )  # fmt: skip
        assert schedule.status_code == 201, schedule.text
        endpoint = admin.post(
            "/api/v1/webhook-endpoints",
            json={"url": "https://93.184.216.34/hooks/conveyor", "events": ["job.cancelled"]},
        )
        assert endpoint.status_code == 201, endpoint.text
        endpoint_id = endpoint.json()["id"]
        # Disabled: its events are held, never sent to that address.
        disabled = admin.patch(f"/api/v1/webhook-endpoints/{endpoint_id}", json={"enabled": False})
        assert disabled.status_code == 200, disabled.text
        yield {"job": dead, "letter": letter}
        admin.delete(f"/api/v1/schedules/{schedule.json()['id']}")
        admin.delete(f"/api/v1/webhook-endpoints/{endpoint_id}")


SHOWN: dict[str, Callable[[dict[str, str]], str]] = {
    "login": lambda ids: "/login",
    "overview": lambda ids: "/",
    "jobs": lambda ids: "/jobs",
    "job": lambda ids: f"/jobs/{ids['job']}",
    "queues": lambda ids: "/queues",
    "workers": lambda ids: "/workers",
    "dead-letters": lambda ids: "/dead-letters",
    "dead-letter": lambda ids: f"/dead-letters/{ids['letter']}",
    "replay-confirmation": lambda ids: f"/dead-letters/replay-matching?task={DIAGNOSTICS}",
    "schedules": lambda ids: "/schedules",
    "webhooks": lambda ids: "/webhooks",
    "payments-review": lambda ids: "/payments-review",
}


@pytest.mark.parametrize("name", list(SHOWN))
def test_each_page_is_accessible_and_photographed(
    name: str, page: Page, dashboard: str, seeded: dict[str, str]
) -> None:
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"script error: {error}"))
    page.on(
        "console",
        lambda message: problems.append(message.text) if message.type == "error" else None,
    )
    assert status_of(page, dashboard + SHOWN[name](seeded)) == 200, name
    if name == "overview":
        expect(page.locator(".chart canvas")).to_have_count(4, timeout=MS)
    screenshot(page, name)
    assert axe_violations(page) == [], name
    assert problems == [], name
