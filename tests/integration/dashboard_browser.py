"""Driving the dashboard in a real browser: Debian's Chromium under Playwright, axe-core for
accessibility, full-page screenshots, and a dashboard sign-in for plain HTTP clients.

The browser tests skip with the reason when Playwright or /usr/bin/chromium is missing (a
laptop); `./dev test` installs both, so CI runs them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

CHROMIUM = Path("/usr/bin/chromium")
# The machine's network is closed: without these, Chromium keeps dialling Google's hosts.
LAUNCH_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
# Seconds, for Playwright's waits (it counts in milliseconds); live regions refresh every 2 s.
WAIT = 20.0
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-output" / "dashboard"
AXE_TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa"]
BLOCKING_IMPACTS = {"serious", "critical"}
_CSRF_FIELD = re.compile(r'name="csrf_token" value="([^"]+)"')


@contextmanager
def chromium() -> Iterator[Browser]:
    """One headless Chromium, or a skip that says what is missing."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=LAUNCH_ARGS, headless=True
        )
        try:
            yield browser
        finally:
            browser.close()


def sign_in(page: Page, dashboard: str, key: str) -> None:
    """Through the login form, as a person would."""
    page.goto(f"{dashboard}/login")
    page.locator("#api_key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{dashboard}/", timeout=WAIT * 1000)


def mark_document(page: Page) -> None:
    """A flag in the page's JavaScript state: a reload or a new document loses it."""
    page.evaluate("window.__marker = 1")


def same_document(page: Page) -> bool:
    return bool(page.evaluate("window.__marker === 1"))


def axe_violations(page: Page) -> list[dict[str, Any]]:
    """axe-core's serious and critical WCAG 2 A/AA violations on the page as it is now.

    axe-core comes bundled in the axe-playwright-python package; only its script is used.
    """
    pytest.importorskip("axe_playwright_python", reason="axe-playwright-python is not installed")
    script = (files("axe_playwright_python") / "axe.min.js").read_text(encoding="utf-8")
    page.evaluate(script)
    options = {"runOnly": {"type": "tag", "values": AXE_TAGS}, "resultTypes": ["violations"]}
    results: dict[str, Any] = page.evaluate("options => axe.run(document, options)", options)
    return [
        {
            "id": item["id"],
            "impact": item["impact"],
            "help": item["help"],
            "nodes": [node["target"] for node in item["nodes"]][:5],
        }
        for item in results["violations"]
        if item["impact"] in BLOCKING_IMPACTS
    ]


def screenshot(page: Page, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


@contextmanager
def http_session(base_url: str, key: str) -> Iterator[tuple[httpx.Client, str]]:
    """An HTTP client signed in to the dashboard through its form, and the session's CSRF
    token, read from a page as the browser would."""
    with httpx.Client(base_url=base_url, timeout=30, headers={"accept": "text/html"}) as client:
        form = client.get("/dashboard/login")
        token = _CSRF_FIELD.search(form.text)
        assert token is not None, form.text
        signed = client.post(
            "/dashboard/login",
            data={"api_key": key, "csrf_token": token.group(1), "next": "/dashboard/"},
        )
        assert signed.status_code == 303, signed.text
        page = client.get("/dashboard/jobs")
        assert page.status_code == 200, page.text
        csrf = _CSRF_FIELD.search(page.text)
        assert csrf is not None
        yield client, csrf.group(1)
