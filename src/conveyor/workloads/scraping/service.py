"""Crawls as the API and the tasks see them: checked requests, rows, listings, exports."""

from __future__ import annotations

import csv
import io
import json
import re
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from conveyor.core.ledger import iso
from conveyor.core.models import utcnow
from conveyor.core.netguard import InvalidUrl, NetPolicy
from conveyor.core.rate_limit import parse_rate
from conveyor.core.settings import Settings
from conveyor.workloads.scraping.extract import BadRule, parse_rules, rules_hash
from conveyor.workloads.scraping.frontier import BadUrl, Rules, domain_matches, host_of, normalize
from conveyor.workloads.scraping.models import (
    Crawl,
    CrawlItem,
    CrawlPage,
    CrawlStatus,
    PageStatus,
    ScrapeProxy,
)
from conveyor.workloads.scraping.proxies import Proxy, parse_proxies, parse_proxy
from conveyor.workloads.scraping.settings import ScrapingSettings
from conveyor.workloads.scraping.store import CrawlInfo, insert_pages

CRAWL_TASK = "conveyor.workloads.scraping.crawl"
_DOMAIN = re.compile(r"^(?=.{1,253}$)([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?\.)*[a-z0-9_-]{1,63}$")
MAX_PATTERN_CHARS = 500


class InvalidCrawl(ValueError):
    """A crawl request that cannot run; the message starts with the field it is about."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True)
class Spec:
    seeds: list[str]
    allowed_domains: list[str]
    max_pages: int
    max_depth: int
    include: list[str]
    exclude: list[str]
    extract: dict[str, Any]
    rate: str | None


def _patterns(field: str, patterns: Sequence[str]) -> list[str]:
    for index, pattern in enumerate(patterns):
        if len(pattern) > MAX_PATTERN_CHARS:
            raise InvalidCrawl(f"{field}[{index}]", f"longer than {MAX_PATTERN_CHARS} characters")
        try:
            re.compile(pattern)
        except re.error as exc:
            raise InvalidCrawl(f"{field}[{index}]", f"not a regular expression: {exc}") from None
    return list(patterns)


def check(
    *,
    seeds: Sequence[str],
    allowed_domains: Sequence[str],
    max_pages: int,
    max_depth: int,
    include: Sequence[str],
    exclude: Sequence[str],
    extract: dict[str, Any],
    rate: str | None,
    settings: Settings,
    scraping: ScrapingSettings,
) -> Spec:
    """The crawl as it will run, or InvalidCrawl naming the field."""
    if len(seeds) > scraping.scrape_max_seeds:
        raise InvalidCrawl(
            "seeds", f"at most {scraping.scrape_max_seeds} (CONVEYOR_SCRAPE_MAX_SEEDS)"
        )
    if max_pages > scraping.scrape_max_pages_limit:
        raise InvalidCrawl(
            "max_pages",
            f"at most {scraping.scrape_max_pages_limit} (CONVEYOR_SCRAPE_MAX_PAGES_LIMIT)",
        )
    if max_depth > scraping.scrape_max_depth_limit:
        raise InvalidCrawl(
            "max_depth",
            f"at most {scraping.scrape_max_depth_limit} (CONVEYOR_SCRAPE_MAX_DEPTH_LIMIT)",
        )
    policy = NetPolicy.from_settings(settings)
    normalized: list[str] = []
    for index, seed in enumerate(seeds):
        try:
            url = normalize(seed)
            policy.check_url(url)
        except (BadUrl, InvalidUrl) as exc:
            raise InvalidCrawl(f"seeds[{index}]", f"{seed!r} {exc}") from None
        except Exception as exc:  # BlockedDestination: a private or metadata address
            raise InvalidCrawl(f"seeds[{index}]", str(exc)) from None
        normalized.append(url)
    domains: list[str] = []
    for index, domain in enumerate(allowed_domains):
        name = domain.strip().lower().rstrip(".")
        if not _DOMAIN.match(name):
            raise InvalidCrawl(
                f"allowed_domains[{index}]", f"{domain!r} is not a host name such as example.com"
            )
        domains.append(name)
    if not domains:
        domains = list(dict.fromkeys(host_of(url) for url in normalized))
    for index, url in enumerate(normalized):
        if not any(domain_matches(host_of(url), domain) for domain in domains):
            raise InvalidCrawl(f"seeds[{index}]", f"{host_of(url)} is not in allowed_domains")
    try:
        parse_rules(extract)
    except BadRule as exc:
        raise InvalidCrawl("extract", str(exc)) from None
    if rate is not None:
        try:
            wanted = parse_rate(rate)
        except ValueError as exc:
            raise InvalidCrawl("rate", str(exc)) from None
        ceiling = parse_rate(scraping.scrape_domain_rate)
        if wanted.per_second > ceiling.per_second:
            raise InvalidCrawl(
                "rate",
                f"{rate} is faster than the per-domain rate {scraping.scrape_domain_rate} "
                "(CONVEYOR_SCRAPE_DOMAIN_RATE); a crawl may only go slower",
            )
    return Spec(
        list(dict.fromkeys(normalized)),
        domains,
        max_pages,
        max_depth,
        _patterns("include", include),
        _patterns("exclude", exclude),
        dict(extract),
        rate,
    )


def create(session: Session, owner: str | None, spec: Spec, *, kind: str = "crawl") -> Crawl:
    crawl = Crawl(
        id=uuid.uuid4().hex,
        owner=owner,
        kind=kind,
        status=CrawlStatus.QUEUED,
        seeds=spec.seeds,
        allowed_domains=spec.allowed_domains,
        include=spec.include,
        exclude=spec.exclude,
        extract=spec.extract,
        max_pages=spec.max_pages,
        max_depth=spec.max_depth,
        rate=spec.rate,
        job_id=uuid.uuid4().hex,
    )
    session.add(crawl)
    session.flush()
    insert_pages(session, crawl.id, spec.seeds, 0)
    return crawl


def info(crawl: Crawl) -> CrawlInfo:
    return CrawlInfo(
        id=crawl.id,
        owner=crawl.owner,
        job_id=crawl.job_id,
        kind=crawl.kind,
        status=crawl.status,
        max_pages=crawl.max_pages,
        max_depth=crawl.max_depth,
        rate=crawl.rate,
        rules=Rules.of(crawl.allowed_domains, crawl.include, crawl.exclude),
        extract=dict(crawl.extract),
        rules_hash=rules_hash(crawl.extract),
    )


def get(
    session: Session, crawl_id: str, owner: str | None, kind: str | None = None
) -> Crawl | None:
    crawl = session.get(Crawl, crawl_id)
    if crawl is None or (owner is not None and crawl.owner != owner):
        return None
    if kind is not None and crawl.kind != kind:
        return None
    return crawl


def listing(session: Session, owner: str | None, limit: int, offset: int) -> list[Crawl]:
    query = select(Crawl).where(Crawl.kind == "crawl")
    if owner is not None:
        query = query.where(Crawl.owner == owner)
    query = query.order_by(Crawl.created_at.desc(), Crawl.id.desc())
    return list(session.scalars(query.limit(limit).offset(offset)))


def cancel(session: Session, crawl: Crawl) -> None:
    """Mark the crawl cancelled and every page not yet done skipped (its jobs stop at their
    next progress report once cancelled too)."""
    crawl.status, crawl.finished_at = CrawlStatus.CANCELLED, utcnow()
    left = session.execute(
        update(CrawlPage)
        .where(
            CrawlPage.crawl_id == crawl.id,
            CrawlPage.status.in_((PageStatus.QUEUED, PageStatus.FETCHING)),
        )
        .values(status=PageStatus.SKIPPED, error="crawl cancelled")
    )
    crawl.pages_skipped += int(left.rowcount or 0)  # type: ignore[attr-defined]


def part_job_ids(crawl: Crawl, parts: int) -> list[str]:
    """The ids of the jobs working on a crawl: its own job, then one per extra part."""
    assert crawl.job_id is not None
    return [crawl.job_id] + [f"{crawl.job_id}-{part}" for part in range(1, parts)]


def in_progress(session: Session, crawl_id: str) -> dict[str, int]:
    counts = dict(
        session.execute(
            select(CrawlPage.status, func.count())
            .where(
                CrawlPage.crawl_id == crawl_id,
                CrawlPage.status.in_((PageStatus.QUEUED, PageStatus.FETCHING)),
            )
            .group_by(CrawlPage.status)
        ).all()
    )
    return {
        "pages_queued": int(counts.get(PageStatus.QUEUED, 0)),
        "pages_in_flight": int(counts.get(PageStatus.FETCHING, 0)),
    }


def to_dict(session: Session, crawl: Crawl, items_url: str) -> dict[str, Any]:
    return {
        "id": crawl.id,
        "job_id": crawl.job_id,
        "kind": crawl.kind,
        "status": crawl.status,
        "seeds": crawl.seeds,
        "allowed_domains": crawl.allowed_domains,
        "max_pages": crawl.max_pages,
        "max_depth": crawl.max_depth,
        "include": crawl.include,
        "exclude": crawl.exclude,
        "extract": crawl.extract,
        "rate": crawl.rate,
        "pages_fetched": crawl.pages_fetched,
        **in_progress(session, crawl.id),
        "pages_failed": crawl.pages_failed,
        "pages_skipped_robots": crawl.pages_skipped_robots,
        "pages_skipped": crawl.pages_skipped,
        "pages_duplicate": crawl.pages_duplicate,
        "pages_not_modified": crawl.pages_not_modified,
        "pages_retried": crawl.pages_retried,
        "pages_redirected": crawl.pages_redirected,
        "items": crawl.items,
        "error": crawl.error,
        "created_at": iso(crawl.created_at),
        "started_at": iso(crawl.started_at),
        "finished_at": iso(crawl.finished_at),
        "items_url": items_url,
    }


def pages(
    session: Session, crawl_id: str, status: str | None, limit: int, offset: int
) -> list[CrawlPage]:
    query = select(CrawlPage).where(CrawlPage.crawl_id == crawl_id)
    if status is not None:
        query = query.where(CrawlPage.status == status)
    return list(session.scalars(query.order_by(CrawlPage.id).limit(limit).offset(offset)))


def page_to_dict(page: CrawlPage) -> dict[str, Any]:
    return {
        "id": page.id,
        "url": page.url,
        "depth": page.depth,
        "status": page.status,
        "http_status": page.http_status,
        "final_url": page.final_url,
        "content_type": page.content_type,
        "size": page.size,
        "attempts": page.attempts,
        "deferrals": page.deferrals,
        "error": page.error,
        "fetched_at": iso(page.fetched_at),
    }


def item_of(session: Session, page_id: int) -> dict[str, Any] | None:
    item = session.scalar(select(CrawlItem).where(CrawlItem.page_id == page_id))
    return None if item is None else {"url": item.url, **item.data}


def _items(session: Session, crawl_id: str) -> Iterator[CrawlItem]:
    query = select(CrawlItem).where(CrawlItem.crawl_id == crawl_id).order_by(CrawlItem.id)
    yield from session.scalars(query.execution_options(yield_per=1000))


def export_jsonl(session: Session, crawl_id: str) -> Iterator[bytes]:
    for item in _items(session, crawl_id):
        yield (json.dumps({"url": item.url, **item.data}, ensure_ascii=False) + "\n").encode()


def _cell(value: Any) -> str:
    if value is None:
        return ""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    # A cell a spreadsheet would run as a formula is quoted (CSV injection).
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def export_csv(session: Session, crawl_id: str, fields: Sequence[str]) -> Iterator[bytes]:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["url", *fields])
    for item in _items(session, crawl_id):
        writer.writerow([item.url, *(_cell(item.data.get(name)) for name in fields)])
        if buffer.tell() > 65536:
            yield buffer.getvalue().encode()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue().encode()


def load_proxies(session: Session, scraping: ScrapingSettings) -> list[Proxy]:
    """The pool: proxies from CONVEYOR_SCRAPE_PROXIES, then those added through the API."""
    configured = scraping.scrape_proxies
    proxies = parse_proxies(configured.get_secret_value()) if configured else []
    for row in session.scalars(select(ScrapeProxy).order_by(ScrapeProxy.created_at)):
        proxies.append(parse_proxy(row.url, "api"))
    return proxies
