"""The scraping tests' infrastructure (tests/integration/scrape_site.py) does what it says."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest

from tests.integration.scrape_site import (
    BanningProxy,
    Proxies,
    TestSite,
    max_in_window,
    normalise_url,
)


@pytest.fixture
def site() -> Iterator[TestSite]:
    with TestSite(pages_per_host=20, crawl_delay=0.5, retry_after=1) as site:
        yield site


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    # trust_env=False: an HTTP_PROXY in the caller's shell must not reroute loopback requests.
    with httpx.Client(trust_env=False, timeout=10) as client:
        yield client


def hrefs(html: str) -> list[str]:
    return re.findall(r'<a href="([^"]*)"', html)


def test_robots(site: TestSite, client: httpx.Client) -> None:
    for base in site.base_urls:
        robots = client.get(f"{base}/robots.txt")
        assert robots.status_code == 200
        assert robots.text.splitlines() == [
            "User-agent: *",
            "Disallow: /private/",
            "Crawl-delay: 0.5",
        ]


def test_hosts_share_one_port(site: TestSite) -> None:
    assert site.hosts == [f"127.0.0.{n}:{site.port}" for n in (2, 3, 4)]


def test_tree_links_and_items(site: TestSite, client: httpx.Client) -> None:
    assert hrefs(client.get(site.start_urls[0]).text) == ["/page/0", "/page/0#top"]
    page0 = hrefs(client.get(site.url(0, "/page/0")).text)
    assert page0 == ["/page/1", "/page/2", site.url(1, "/page/0"), "/private/secret-0"]
    assert hrefs(client.get(site.url(2, "/page/19")).text) == [site.url(0, "/page/19")]
    page4 = hrefs(client.get(site.url(0, "/page/4")).text)
    assert {"/page/9#reviews", "/page/9?utm_source=x&utm_medium=email"} <= set(page4)
    page2 = hrefs(client.get(site.url(0, "/page/2")).text)
    assert {"mailto:owner@example.com", "javascript:void(0)", "/loop-a", "/huge"} <= set(page2)

    url = site.url(1, "/page/7")
    html, item = client.get(url).text, site.expected_item(url)
    assert item is not None
    assert f"<h1>{item['title']}</h1>" in html
    assert f'<span class="price">{item["price"]}</span>' in html
    assert re.findall(r'<a class="tag">([^<]*)</a>', html) == site.expected_tags(url)
    assert site.expected_item(site.url(0, "/moved")) == site.expected_item(site.url(0, "/page/5"))
    assert site.expected_item(site.url(0, "/error")) is None


def test_allowed_urls(site: TestSite) -> None:
    allowed = site.allowed_urls()
    # Per host: the index, 20 pages, 13 linked special pages and the loop's /loop-b.
    assert len(allowed) == 3 * (1 + 20 + 13 + 1)
    assert site.url(2, "/loop-b") in allowed
    assert not [u for u in allowed if "private" in u or "#" in u or "utm_" in u]
    assert normalise_url("HTTP://127.0.0.2:1/a?utm_source=x&id=3#f") == "http://127.0.0.2:1/a?id=3"


def test_retry_after_then_ok(site: TestSite, client: httpx.Client) -> None:
    host = site.hosts[0]
    busy = client.get(site.url(0, "/busy"))
    assert (busy.status_code, busy.headers["Retry-After"]) == (429, "1")
    assert client.get(site.url(0, "/busy")).status_code == 200
    assert client.get(site.url(1, "/busy")).status_code == 429  # each host counts apart
    assert [client.get(site.url(0, "/unavailable")).status_code for _ in range(2)] == [503, 200]
    assert [client.get(site.url(0, "/flaky")).status_code for _ in range(3)] == [500, 500, 200]
    gap = site.first_retry_gap(host, "/busy")
    assert gap is not None
    assert 0 <= gap < 1
    assert site.first_retry_gap(host, "/flaky") is None
    assert site.count(host, "/flaky") == 3
    assert {"/busy", "/unavailable", "/flaky"} == site.paths_fetched(host)


def test_redirects(site: TestSite, client: httpx.Client) -> None:
    loop = client.get(site.url(0, "/loop-a"))
    assert (loop.status_code, loop.headers["Location"]) == (302, "/loop-b")
    with pytest.raises(httpx.TooManyRedirects):
        client.get(site.url(0, "/loop-a"), follow_redirects=True)
    moved = client.get(site.url(0, "/moved"), follow_redirects=True)
    assert moved.url == site.url(0, "/page/5")
    assert moved.history[0].status_code == 301


def test_other_special_pages(site: TestSite, client: httpx.Client) -> None:
    assert client.get(site.url(0, "/dup-1")).content == client.get(site.url(0, "/dup-2")).content
    latin1 = client.get(site.url(0, "/latin1"))
    assert latin1.headers["Content-Type"] == "text/html"
    assert "<h1>Café latin-1</h1>" in latin1.content.decode("iso-8859-1")
    etag = client.get(site.url(0, "/etag"))
    assert etag.headers["ETag"] == '"v1"'
    assert client.get(site.url(0, "/etag"), headers={"If-None-Match": '"v1"'}).status_code == 304
    assert site.requests[-1].if_none_match == '"v1"'
    assert client.get(site.url(0, "/gone")).status_code == 404
    assert client.get(site.url(0, "/error")).status_code == 500
    with client.stream("GET", site.url(0, "/huge")) as huge:
        assert "Content-Length" not in huge.headers
        assert sum(len(chunk) for chunk in huge.iter_raw()) == 20 * 1024 * 1024


def test_max_in_window() -> None:
    assert max_in_window([]) == 0
    assert max_in_window([3.0, 0.0, 0.1, 0.5, 0.99, 1.0, 1.05]) == 5  # 0.1 .. 1.05
    assert max_in_window([0.0, 0.5, 1.0, 1.5], window=0.5) == 1


def test_max_in_window_on_the_log(site: TestSite, client: httpx.Client) -> None:
    for _ in range(5):
        client.get(site.url(0, "/page/0"))
    client.get(site.url(1, "/page/0"))
    assert site.max_in_window(site.hosts[0], window=10) == 5
    assert site.max_in_window(site.hosts[1], window=10) == 1


def test_proxies_forward_and_die(site: TestSite) -> None:
    with Proxies() as proxies:
        for index, proxy in enumerate(proxies.urls):
            with httpx.Client(proxy=proxy, trust_env=False, timeout=10) as client:
                assert client.get(site.url(index, "/page/0")).status_code == 200
            assert site.requests[-1].host == site.hosts[index]
            assert site.requests[-1].via == "1.1 proxy.py v2.4.10"
        proxies.kill(0)
        with pytest.raises(httpx.ConnectError):
            httpx.get(site.url(0, "/page/0"), proxy=proxies.urls[0], trust_env=False)
        assert (
            httpx.get(site.url(0, "/"), proxy=proxies.urls[1], trust_env=False).status_code == 200
        )


def test_banning_proxy(site: TestSite) -> None:
    with BanningProxy() as proxy, httpx.Client(proxy=proxy.url, trust_env=False) as client:
        assert client.get(site.url(0, "/page/0")).status_code == 403
        assert client.get(site.url(1, "/page/1")).status_code == 403
    assert proxy.targets == [site.url(0, "/page/0"), site.url(1, "/page/1")]
    assert site.requests == []
