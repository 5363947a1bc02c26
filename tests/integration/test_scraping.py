"""The scraping workload end to end: a real API, two worker processes on the `scraping`
queue, a three-host site and real proxies on loopback (tests/integration/scrape_site.py)."""

from __future__ import annotations

import csv
import io
import json
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import pairwise
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.integration.conftest import Process, Stack, extra_api, wait_for
from tests.integration.scrape_site import SPECIAL_PATHS, BanningProxy, Proxies, TestSite

pytestmark = pytest.mark.integration

RETRY_AFTER = 2
CRAWL_DELAY = 0.25  # robots.txt's: 4 requests per second per host, below the domain rate
MAX_ATTEMPTS = 3
SCRAPING_ENV = {
    "CONVEYOR_ALLOW_PRIVATE_NETWORKS": "true",  # the site is on loopback
    "CONVEYOR_SCRAPE_DOMAIN_RATE": "8/s",
    "CONVEYOR_SCRAPE_DOMAIN_CONCURRENCY": "2",
    "CONVEYOR_SCRAPE_MAX_ATTEMPTS": str(MAX_ATTEMPTS),
    "CONVEYOR_SCRAPE_BACKOFF_SECONDS": "0.5",
    "CONVEYOR_SCRAPE_TIMEOUT_SECONDS": "5",
    "CONVEYOR_SCRAPE_MAX_BODY_BYTES": str(2 * 1024 * 1024),
    "CONVEYOR_SCRAPE_USER_AGENT": "ConveyorTestBot/1.0 (+https://example.com/bot)",
    "CONVEYOR_SCRAPE_PROXY_COOLDOWN_SECONDS": "60",
}
RULES = {"title": "h1", "price": ".price"}


@contextmanager
def scraping_workers(stack: Stack, **overrides: str) -> Iterator[tuple[httpx.Client, Process]]:
    """An API process and a worker with two processes on `scraping`, with SCRAPING_ENV."""
    env = {**stack.env, **SCRAPING_ENV, **overrides}
    node = f"scrape-{uuid.uuid4().hex[:8]}@%h"
    worker = Process(
        "scrape-worker",
        [
            sys.executable, "-m", "celery", "-A", "conveyor.worker", "worker", "-Q", "scraping",
            "-c", "2", "-n", node, "--without-gossip", "--without-mingle", "--loglevel", "INFO",
        ],
        env,
        stack.tmp / f"scrape-worker-{node[:15]}.log",
    )  # fmt: skip
    worker.start()
    try:
        with extra_api(stack, "scrape-api", **{**SCRAPING_ENV, **overrides}) as base_url:
            headers = {"Authorization": f"Bearer {stack.admin_key}"}
            with httpx.Client(base_url=base_url, headers=headers, timeout=30) as client:
                yield client, worker
    finally:
        worker.stop()


def crawl(client: httpx.Client, **body: Any) -> dict[str, Any]:
    response = client.post("/api/v1/crawls", json=body)
    assert response.status_code == 202, response.text
    accepted: dict[str, Any] = response.json()
    assert set(accepted) >= {"id", "job_id", "status"}
    return accepted


def finished(
    client: httpx.Client, crawl_id: str, worker: Process, timeout: float
) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        body: dict[str, Any] = client.get(f"/api/v1/crawls/{crawl_id}").json()
        return body if body["status"] in ("done", "failed", "cancelled") else None

    try:
        result: dict[str, Any] = wait_for(done, timeout, f"crawl {crawl_id} to finish", 0.5)
    except AssertionError:
        print(worker.log_tail(120))
        raise
    return result


def pages(client: httpx.Client, crawl_id: str, status: str | None = None) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    offset: int | None = 0
    while offset is not None:
        params: dict[str, Any] = {"limit": 500, "offset": offset}
        if status:
            params["status"] = status
        body = client.get(f"/api/v1/crawls/{crawl_id}/pages", params=params).json()
        found += body["items"]
        offset = body["next_offset"]
    return found


@pytest.mark.one_database
def test_a_polite_crawl_of_three_hosts(stack: Stack) -> None:
    with (
        TestSite(pages_per_host=80, retry_after=RETRY_AFTER, crawl_delay=CRAWL_DELAY) as site,
        scraping_workers(stack) as (client, worker),
    ):
        accepted = crawl(
            client,
            seeds=site.start_urls,
            allowed_domains=[host.split(":")[0] for host in site.hosts],
            max_pages=1000,
            max_depth=20,
            extract=RULES,
        )

        # The crawl's job reports progress as it goes (what `conveyor jobs watch` shows).
        def progressing() -> bool:
            job = client.get(f"/api/v1/jobs/{accepted['job_id']}").json()
            return bool((job.get("progress") or {}).get("current"))

        wait_for(progressing, 30, "the crawl job to report progress", 0.3)
        result = finished(client, accepted["id"], worker, timeout=150)
        assert result["status"] == "done", result

        allowed = site.allowed_urls()
        rows = {page["url"]: page for page in pages(client, accepted["id"])}
        fetched = site.fetched_urls()
        # Every request names the operator, as configured.
        assert {entry.user_agent for entry in site.requests} == {
            SCRAPING_ENV["CONVEYOR_SCRAPE_USER_AGENT"]
        }
        # Never a page robots.txt disallows; robots.txt itself once per host.
        assert not [url for url in fetched if "/private/" in url]
        for host in site.hosts:
            assert site.count(host, "/robots.txt") == 1, host
        # Every allowed page fetched once, and once more per attempt it failed or wait it
        # was told to take; the failing pages exactly as often as the failure table says.
        for url in allowed:
            row = rows[url]
            assert fetched[url] == 1 + row["attempts"] + row["deferrals"], row
        again = {"/error": MAX_ATTEMPTS, "/flaky": 3, "/busy": 2, "/unavailable": 2}
        for url in allowed:
            assert fetched[url] == again.get(urlsplit(url).path, fetched[url]), url
        # Other pages: a network hiccup may cost one an attempt, but not many.
        hiccups = [url for url in allowed if fetched[url] > 1 and urlsplit(url).path not in again]
        assert len(hiccups) <= 2, hiccups
        unexpected = set(fetched) - {f"{base}/robots.txt" for base in site.base_urls} - allowed
        assert unexpected == set()

        # Never above a host's rate (robots' Crawl-delay: 4 per second) in any second,
        # across both worker processes. The site's clock reads a request when its thread
        # gets to it, and on two loaded cores a request can reach it 0.1 s or more after it
        # left (the crawler's own timing is exact: test_scraping_limits.py): 0.15 s of slack.
        per_second = round(1 / CRAWL_DELAY)
        for host in site.hosts:
            entries = sorted(site.for_host(host), key=lambda entry: entry.arrived)
            gaps = [(round(b.arrived - a.arrived, 3), a.path, b.path) for a, b in pairwise(entries)]
            assert site.max_in_window(host, window=1.0 - 0.15) <= per_second, (
                host,
                sorted(gaps)[:9],
            )
            # Every Retry-After honoured, by the whole host.
            for path in ("/busy", "/unavailable"):
                gap = site.first_retry_gap(host, path)
                assert gap is not None, (host, path)
                assert gap >= RETRY_AFTER - 0.05, (host, path, gap)

        # The failure table, page by page.
        first = site.base_urls[0]
        assert rows[f"{first}/gone"]["status"] == "failed"
        assert rows[f"{first}/gone"]["error"] == "HTTP 404"
        assert rows[f"{first}/gone"]["attempts"] == 0
        assert rows[f"{first}/error"]["error"] == f"HTTP 500 (after {MAX_ATTEMPTS} attempts)"
        # A redirect's target is a page of its own: fetched once, a loop simply ends.
        assert rows[f"{first}/loop-a"]["status"] == "redirected"
        assert rows[f"{first}/loop-b"]["final_url"] == f"{first}/loop-a"
        assert "larger than 2,097,152 bytes" in rows[f"{first}/huge"]["error"]
        # (Special pages are the same bytes on every host: all but one are duplicates.)
        assert rows[f"{first}/flaky"]["http_status"] == 200
        assert rows[f"{first}/flaky"]["attempts"] == 2  # two 500s, each an attempt
        assert rows[f"{first}/busy"]["http_status"] == 200
        assert rows[f"{first}/busy"]["attempts"] == 0  # a Retry-After spends no attempt
        assert rows[f"{first}/moved"]["final_url"] == f"{first}/page/5"
        # /dup-1 and /dup-2 are the same bytes on every host: one is kept, five are duplicates.
        copies = sorted(row["status"] for url, row in rows.items() if "/dup-" in url)
        assert copies == ["duplicate"] * 5 + ["fetched"]
        # Dead letters: one per URL that kept failing, the crawl finished all the same.
        letters = client.get("/api/v1/dead-letters", params={"limit": 200}).json()["items"]
        dead_urls = {
            letter["kwargs"]["url"]
            for letter in letters
            if letter["task_name"] == "conveyor.workloads.scraping.page"
            and letter["kwargs"]["crawl_id"] == accepted["id"]
        }
        assert dead_urls == {f"{base}/error" for base in site.base_urls}
        assert result["pages_failed"] == 3 * 3  # /error, /gone and /huge on each host
        assert result["pages_redirected"] == 3 * 3  # /moved, /loop-a and /loop-b
        assert result["pages_skipped_robots"] >= 3

        # Replaying a page's dead letter fetches that page again, in its crawl.
        letter = next(
            item
            for item in letters
            if item["task_name"] == "conveyor.workloads.scraping.page"
            and item["kwargs"]["url"] == f"{first}/error"
        )
        before = site.count(site.hosts[0], "/error")
        replayed = client.post(f"/api/v1/dead-letters/{letter['id']}/replay")
        assert replayed.status_code in (200, 201, 202), replayed.text
        stack.wait_job(replayed.json()["job_id"], {"succeeded"}, timeout=60)
        assert site.count(site.hosts[0], "/error") == before + MAX_ATTEMPTS
        again = client.get(f"/api/v1/crawls/{accepted['id']}").json()
        assert again["status"] == "done"
        assert again["pages_failed"] == result["pages_failed"]  # failed again, counted once

        # Items, exported both ways, equal what the site serves. The special pages are the
        # same bytes on every host, so each gives one item, on whichever host came first.
        def special(url: str) -> bool:
            return urlsplit(url).path in SPECIAL_PATHS

        expected = {
            url: item
            for url in allowed
            if (item := site.expected_item(url)) is not None and not special(url)
        }
        lines = client.get(f"/api/v1/crawls/{accepted['id']}/items", params={"format": "jsonl"})
        assert lines.headers["content-type"].startswith("application/x-ndjson")
        items = [json.loads(line) for line in lines.text.splitlines()]
        got = {item.pop("url"): item for item in items}
        assert {url: item for url, item in got.items() if not special(url)} == expected
        kept = sorted(urlsplit(url).path.replace("-2", "-1") for url in got if special(url))
        # One each, even when two jobs fetch copies at the same moment (a unique index).
        assert kept == ["/busy", "/dup-1", "/etag", "/flaky", "/latin1", "/slow", "/unavailable"]
        latin1 = next(item for url, item in got.items() if url.endswith("/latin1"))
        assert latin1["title"] == "Café latin-1"  # decoded by its <meta charset>
        exported = client.get(f"/api/v1/crawls/{accepted['id']}/items", params={"format": "csv"})
        assert exported.headers["content-type"].startswith("text/csv")
        table = list(csv.DictReader(io.StringIO(exported.text)))
        assert [row["url"] for row in table] == [
            item["url"] for item in map(json.loads, lines.text.splitlines())
        ]
        assert set(table[0]) == {"url", "title", "price"}


@pytest.mark.one_database
def test_proxies_share_the_work_and_a_dead_or_banned_one_rests(stack: Stack) -> None:
    with (
        TestSite(pages_per_host=30) as site,
        Proxies(2) as proxies,
        BanningProxy() as banning,
        scraping_workers(stack, CONVEYOR_SCRAPE_DOMAIN_RATE="20/s") as (client, worker),
    ):
        added = []
        for url in [*proxies.urls, banning.url]:
            with_credentials = url.replace("http://", "http://user:s3cret@")
            response = client.post("/api/v1/scrape-proxies", json={"url": with_credentials})
            assert response.status_code == 201, response.text
            assert "s3cret" not in response.text
            added.append(response.json())
        try:
            accepted = crawl(
                client,
                seeds=site.start_urls,
                allowed_domains=[host.split(":")[0] for host in site.hosts],
                max_pages=1000,
                max_depth=20,
                extract=RULES,
            )
            wait_for(lambda: len(site.requests) >= 20, 30, "the crawl to get going", 0.1)
            proxies.kill(0)
            result = finished(client, accepted["id"], worker, timeout=150)
            assert result["status"] == "done", result
            # Nothing lost: every allowed page fetched, through the proxy still alive.
            fetched = set(site.fetched_urls())
            rows = {page["url"]: page for page in pages(client, accepted["id"])}
            missing = [str(rows.get(url)) for url in site.allowed_urls() - fetched]
            assert missing == [], result
            listed = client.get("/api/v1/scrape-proxies").json()["items"]
            assert "s3cret" not in json.dumps(listed)
            health = {item["label"]: item for item in listed}
            dead, alive = (health[url] for url in proxies.urls)
            assert dead["requests"] > 0
            assert alive["requests"] > 0
            assert dead["state"] == "cooling_down"
            assert dead["errors"] >= 1
            assert alive["state"] == "ready"
            banned = health[banning.url]
            assert banning.count >= 1
            assert banned["state"] == "cooling_down"
            assert banned["bans"] >= 1
            assert banned["last_error"] == "banned: HTTP 403"
        finally:
            for proxy in added:
                client.delete(f"/api/v1/scrape-proxies/{proxy['id']}")
        assert client.get("/api/v1/scrape-proxies").json()["items"] == []
        assert "s3cret" not in worker.log_tail(2000)


@pytest.mark.one_database
def test_a_scrape_extracts_one_page_and_a_recrawl_asks_if_it_changed(stack: Stack) -> None:
    with TestSite(pages_per_host=10) as site, scraping_workers(stack) as (client, _worker):
        url = site.url(0, "/etag")
        items = []
        for _ in range(2):
            response = client.post("/api/v1/scrapes", json={"url": url, "extract": RULES})
            assert response.status_code == 202, response.text
            scrape_id = response.json()["id"]
            stack.wait_job(response.json()["job_id"], {"succeeded"})
            body = client.get(f"/api/v1/scrapes/{scrape_id}").json()
            assert body["status"] == "done", body
            items.append((body["page"]["status"], body["item"]))
        assert items[0] == ("fetched", {"url": url, **(site.expected_item(url) or {})})
        assert items[1] == ("not_modified", items[0][1])  # 304: the last fetch's item
        sent = [entry.if_none_match for entry in site.requests if entry.path == "/etag"]
        assert sent == [None, '"v1"']


@pytest.mark.one_database
def test_cancelling_a_crawl_stops_it(stack: Stack) -> None:
    with (
        TestSite(pages_per_host=200) as site,
        scraping_workers(stack, CONVEYOR_SCRAPE_DOMAIN_RATE="2/s") as (client, _worker),
    ):
        accepted = crawl(client, seeds=[site.start_urls[0]], max_pages=500, max_depth=20)
        wait_for(lambda: len(site.requests) >= 4, 30, "the crawl to start", 0.1)
        response = client.delete(f"/api/v1/crawls/{accepted['id']}")
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "cancelled"
        stack.wait_job(accepted["job_id"], {"cancelled"}, timeout=30)
        seen = len(site.requests)
        time.sleep(1.5)
        assert len(site.requests) <= seen + 2  # at most what was already in flight
        assert client.delete(f"/api/v1/crawls/{accepted['id']}").status_code == 409


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"seeds": ["http://127.0.0.2:8000/"]}, "seeds[0]: refused 127.0.0.2: loopback address"),
        ({"seeds": ["http://169.254.169.254/"]}, "seeds[0]: refused 169.254.169.254"),
        ({"seeds": ["file:///etc/passwd"]}, "seeds[0]: 'file:///etc/passwd' scheme 'file'"),
        ({"seeds": ["https://example.com/"], "extract": {"t": "h1["}}, "extract: t: 'h1['"),
        ({"seeds": ["https://example.com/"], "max_pages": 10**8}, "max_pages: at most"),
        ({"seeds": ["https://example.com/"], "max_depth": 1000}, "max_depth: at most"),
        ({"seeds": ["https://example.com/"], "max_pages": 0}, "max_pages"),
        ({"seeds": []}, "seeds"),
        ({"seeds": ["https://example.com/"], "rate": "100/s"}, "rate: 100/s is faster"),
    ],
)
def test_bad_crawls_are_refused_naming_the_field(
    stack: Stack, body: dict[str, Any], field: str
) -> None:
    # The stack's own API: private networks refused, as by default.
    with stack.client() as client:
        response = client.post("/api/v1/crawls", json=body)
        assert response.status_code == 422, response.text
        assert field in response.text


def test_a_retried_crawl_request_is_one_crawl_and_other_owners_do_not_see_it(
    stack: Stack,
) -> None:
    body = {"seeds": ["https://example.com/"], "max_pages": 5}
    headers = {"Idempotency-Key": f"crawl-{uuid.uuid4().hex}"}
    with stack.client(stack.key_for("crawler")) as client:
        first = client.post("/api/v1/crawls", json=body, headers=headers)
        again = client.post("/api/v1/crawls", json=body, headers=headers)
        assert first.status_code == again.status_code == 202, first.text
        assert first.json()["id"] == again.json()["id"]
        crawl_id = first.json()["id"]
        with stack.client(stack.key_for("someone-else")) as other:
            assert other.get(f"/api/v1/crawls/{crawl_id}").status_code == 404
            assert other.delete(f"/api/v1/crawls/{crawl_id}").status_code == 404
            assert other.get(f"/api/v1/crawls/{crawl_id}/items").status_code == 404
        # Cancelled before any worker of `scraping` runs: it never fetches anything.
        cancelled = client.delete(f"/api/v1/crawls/{crawl_id}")
        assert cancelled.json()["status"] == "cancelled"
        assert cancelled.json()["pages_skipped"] == 1
