"""The scraping workload without servers: URL spelling, crawl rules, extraction, decoding,
proxy URLs and the checks that turn a bad crawl request into a 422 naming its field."""

from __future__ import annotations

from typing import Any

import pytest

from conveyor.core.rate_limit import Rate
from conveyor.core.settings import Settings
from conveyor.workloads.scraping import service
from conveyor.workloads.scraping.extract import BadRule, extract, parse_rules
from conveyor.workloads.scraping.fetch import decode, parse_retry_after
from conveyor.workloads.scraping.frontier import BadUrl, Rules, normalize
from conveyor.workloads.scraping.politeness import effective_rate
from conveyor.workloads.scraping.proxies import BadProxy, parse_proxies, parse_proxy
from conveyor.workloads.scraping.robots import agent_token
from conveyor.workloads.scraping.settings import ScrapingSettings, parse_domain_rates


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("HTTP://Example.COM:80/a/../b/./c?b=2&a=1#frag", "http://example.com/b/c?a=1&b=2"),
        ("https://example.com", "https://example.com/"),
        ("https://example.com:443/x?utm_source=mail&id=3&fbclid=z", "https://example.com/x?id=3"),
        ("http://ex.com/~user/?q=café", "http://ex.com/~user/?q=caf%C3%A9"),
    ],
)
def test_one_spelling_per_page(raw: str, expected: str) -> None:
    assert normalize(raw) == expected


def test_links_resolve_against_the_page() -> None:
    assert normalize("../b?x=1#top", "http://127.0.0.2:8080/a/c") == "http://127.0.0.2:8080/b?x=1"


@pytest.mark.parametrize(
    "raw", ["mailto:a@example.com", "javascript:void(0)", "ftp://example.com/", "http:///x"]
)
def test_links_that_are_not_web_pages_are_refused(raw: str) -> None:
    with pytest.raises(BadUrl):
        normalize(raw)


def test_rules_keep_the_crawl_on_its_domains_and_patterns() -> None:
    rules = Rules.of(["example.com", "127.0.0.2"], include=[r"/shop/"], exclude=[r"\.pdf$"])
    assert rules.allows("https://example.com/shop/1")
    assert rules.allows("https://www.example.com/shop/2")  # subdomains belong to their domain
    assert not rules.allows("https://notexample.com/shop/1")
    assert not rules.allows("https://example.com/blog/1")  # not included
    assert not rules.allows("https://example.com/shop/a.pdf")  # excluded
    assert Rules.of(["127.0.0.2"], [], []).allows("http://127.0.0.2:9/x")
    assert not Rules.of(["127.0.0.2"], [], []).allows("http://127.0.0.20/x")


PAGE = """<html><head><base href="/shop/"></head><body>
<h1> Blue <b>kettle</b> </h1><span class="price">19.99</span>
<a class="tag" href="t/1">one</a><a class="tag" href="t/2">two</a>
<a href="/x" rel="nofollow">skip</a><a href="mailto:a@b.c">mail</a></body></html>"""


def test_extraction_rules_give_named_fields() -> None:
    rules = parse_rules(
        {
            "title": "h1",
            "price": ".price",
            "tags": {"selector": "a.tag", "all": True},
            "first_link": {"selector": "a.tag", "attr": "href"},
            "missing": ".nothing",
        }
    )
    found = extract(PAGE, rules)
    assert found.item == {
        "title": "Blue kettle",
        "price": "19.99",
        "tags": ["one", "two"],
        "first_link": "t/1",
        "missing": None,
    }
    assert found.base == "/shop/"
    assert found.links == ["t/1", "t/2", "mailto:a@b.c"]  # nofollow left out


def test_a_page_that_matches_nothing_has_no_item() -> None:
    assert extract("<p>nothing</p>", parse_rules({"title": "h1"})).item is None


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        ({"title": "h1["}, "title: 'h1[' is not a valid CSS selector"),
        ({"title": 3}, "title: a CSS selector"),
        ({"url": "h1"}, "'url': a field name"),
        ({"t": {"selector": "a", "attribute": "href"}}, "t: unknown keys ['attribute']"),
        ({"t": {"selector": "a", "all": "yes"}}, "t: all must be true or false"),
    ],
)
def test_bad_rules_name_their_field(rules: dict[str, Any], message: str) -> None:
    with pytest.raises(BadRule, match="^" + message.replace("[", r"\[")):
        parse_rules(rules)


def test_text_is_decoded_by_the_declared_charset_or_detected() -> None:
    latin = '<meta charset="iso-8859-1"><h1>Café</h1>'.encode("latin-1")
    assert "Café" in decode(latin, "text/html")
    assert "Café" in decode("<h1>Café</h1>".encode("cp1252"), "text/html; charset=windows-1252")
    assert "Café" in decode("<h1>Café</h1>".encode(), None)
    assert "Caf" in decode(b"<h1>Caf\xe9</h1>", "text/html; charset=no-such-charset")


def test_retry_after_as_seconds_or_a_date() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


def test_crawl_delay_slows_a_domain_never_speeds_it() -> None:
    assert effective_rate(Rate(2, 1.0), 3.0) == Rate(1, 3.0)
    assert effective_rate(Rate(1, 10.0), 3.0) == Rate(1, 10.0)
    assert effective_rate(Rate(2, 1.0), None) == Rate(2, 1.0)


def test_domain_rates_and_their_typos() -> None:
    assert parse_domain_rates("Example.com=5/s, slow.org=1/10s") == {
        "example.com": Rate(5, 1.0),
        "slow.org": Rate(1, 10.0),
    }
    settings = ScrapingSettings(scrape_domain_rates="example.com=5/s")
    assert settings.rate_for("EXAMPLE.com") == Rate(5, 1.0)
    assert settings.rate_for("other.org") == Rate(1, 1.0)
    with pytest.raises(ValueError, match="domain=rate"):
        parse_domain_rates("example.com:5/s")
    with pytest.raises(ValueError, match="is not of the form"):
        ScrapingSettings(scrape_domain_rate="fast")


def test_a_proxy_is_known_by_its_label_never_its_credentials() -> None:
    proxy = parse_proxy("http://alice:s3cret@proxy.example:3128")
    assert proxy.label == "http://proxy.example:3128"
    assert "s3cret" not in repr(proxy)
    assert "s3cret" not in proxy.label
    assert len(parse_proxies("http://a:1, ,http://b:2")) == 2
    with pytest.raises(BadProxy, match="proxy 2: a proxy URL must start") as caught:
        parse_proxies("http://a:1,socks5://bob:pw@c:1080")
    assert "pw" not in str(caught.value)


def test_robots_groups_are_matched_by_the_product_token() -> None:
    assert agent_token("ConveyorBot/1.0 (+https://example.com/bot)") == "ConveyorBot"
    assert agent_token("acme") == "acme"


def _check(**overrides: Any) -> service.Spec:
    fields: dict[str, Any] = {
        "seeds": ["http://127.0.0.2:8000/"],
        "allowed_domains": [],
        "max_pages": 10,
        "max_depth": 2,
        "include": [],
        "exclude": [],
        "extract": {"title": "h1"},
        "rate": None,
    }
    fields.update(overrides)
    allow = fields.pop("allow_private", True)
    settings = Settings(allow_private_networks=allow)
    return service.check(**fields, settings=settings, scraping=ScrapingSettings())


def test_a_good_crawl_defaults_its_domains_to_the_seeds() -> None:
    spec = _check(seeds=["http://127.0.0.2:8000/#x", "http://127.0.0.2:8000/"])
    assert spec.seeds == ["http://127.0.0.2:8000/"]
    assert spec.allowed_domains == ["127.0.0.2"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"allow_private": False}, "seeds[0]: refused 127.0.0.2: loopback address"),
        ({"seeds": ["http://169.254.169.254/latest"]}, "seeds[0]: refused 169.254.169.254"),
        ({"seeds": ["ftp://example.com/"]}, "seeds[0]: 'ftp://example.com/' scheme 'ftp'"),
        ({"max_pages": 10**9}, "max_pages: at most 100000"),
        ({"max_depth": 99}, "max_depth: at most 20"),
        ({"allowed_domains": ["exa mple.com"]}, "allowed_domains[0]: 'exa mple.com' is not"),
        ({"allowed_domains": ["example.com"]}, "seeds[0]: 127.0.0.2 is not in allowed_domains"),
        ({"include": ["("]}, "include[0]: not a regular expression"),
        ({"extract": {"title": "h1["}}, "extract: title: 'h1[' is not a valid CSS selector"),
        ({"rate": "5/s"}, "rate: 5/s is faster than the per-domain rate 1/s"),
        ({"rate": "often"}, "rate: rate 'often' is not of the form"),
    ],
)
def test_a_bad_crawl_names_its_field(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(service.InvalidCrawl) as caught:
        _check(**overrides)
    assert str(caught.value).startswith(message), str(caught.value)


def test_a_crawl_may_go_slower_than_the_global_rate() -> None:
    assert _check(rate="1/5s").rate == "1/5s"
