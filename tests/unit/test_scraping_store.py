"""The crawl frontier in the database (SQLite here; the integration tests run PostgreSQL too):
claims, the max_pages budget, what each outcome does to a page, and finishing."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from conveyor.core.models import DeadLetter, utcnow
from conveyor.workloads.scraping import service, store
from conveyor.workloads.scraping.models import Crawl, CrawlItem, CrawlPage, CrawlStatus
from conveyor.workloads.scraping.store import Kind, Outcome


def _crawl(session: Session, seeds: list[str], max_pages: int = 10, max_depth: int = 2) -> Crawl:
    spec = service.Spec(seeds, ["a.test", "b.test"], max_pages, max_depth, [], [], {}, None)
    crawl = service.create(session, "alice", spec)
    crawl.status = CrawlStatus.RUNNING
    session.commit()
    return crawl


def _claim(
    session: Session, crawl: Crawl, want: int = 10, per_domain: int = 5
) -> list[store.PageRef]:
    return store.claim(session, crawl.id, want, lease=60, per_domain=per_domain)


def _record(session: Session, crawl: Crawl, page: store.PageRef, outcome: Outcome) -> None:
    session.expire_all()
    store.record(session, service.info(crawl), page, outcome, max_attempts=2)


def test_a_claim_takes_each_page_once_and_spreads_over_domains(session: Session) -> None:
    seeds = [f"http://a.test/{n}" for n in range(4)] + ["http://b.test/0"]
    crawl = _crawl(session, seeds)
    first = _claim(session, crawl, want=3, per_domain=2)
    assert sorted(page.domain for page in first) == ["a.test", "a.test", "b.test"]
    # a.test has two out already (with whichever job): its cap is reached.
    assert _claim(session, crawl, want=10, per_domain=2) == []
    a_page = next(page for page in first if page.domain == "a.test")
    _record(session, crawl, a_page, Outcome(Kind.FETCHED, http_status=200))
    second = _claim(session, crawl, want=10, per_domain=2)
    assert [page.url for page in second] == ["http://a.test/2"]


def test_max_pages_caps_fetches_and_a_skipped_page_gives_its_place_back(session: Session) -> None:
    crawl = _crawl(session, [f"http://a.test/{n}" for n in range(5)], max_pages=2)
    pages = _claim(session, crawl)
    assert len(pages) == 2
    _record(session, crawl, pages[0], Outcome(Kind.SKIPPED_ROBOTS, error="disallowed"))
    again = _claim(session, crawl)
    assert len(again) == 1  # the robots-skipped page's place went to another page
    _record(session, crawl, pages[1], Outcome(Kind.FETCHED, http_status=200))
    _record(session, crawl, again[0], Outcome(Kind.FETCHED, http_status=200))
    session.expire_all()
    assert store.state(session, crawl.id).finished  # 2 queued pages will never be claimed
    assert store.finish(session, crawl.id)
    session.refresh(crawl)
    assert (crawl.status, crawl.pages_fetched, crawl.pages_skipped_robots) == ("done", 2, 1)
    assert crawl.pages_skipped == 2  # past max_pages


def test_a_fetched_page_stores_its_item_and_queues_its_new_links(session: Session) -> None:
    crawl = _crawl(session, ["http://a.test/"], max_depth=1)
    (page,) = _claim(session, crawl)
    links = ["http://a.test/1", "http://a.test/", "http://b.test/x"]
    _record(session, crawl, page, Outcome(Kind.FETCHED, item={"title": "A"}, links=links))
    urls = set(session.scalars(select(CrawlPage.url).where(CrawlPage.crawl_id == crawl.id)))
    assert urls == {"http://a.test/", "http://a.test/1", "http://b.test/x"}  # no duplicate
    (item,) = session.scalars(select(CrawlItem)).all()
    assert (item.url, item.data) == ("http://a.test/", {"title": "A"})
    deeper = _claim(session, crawl)
    _record(session, crawl, deeper[0], Outcome(Kind.FETCHED, links=["http://a.test/deep"]))
    assert "http://a.test/deep" not in set(session.scalars(select(CrawlPage.url)))  # max_depth


def test_identical_content_is_a_duplicate(session: Session) -> None:
    crawl = _crawl(session, ["http://a.test/1", "http://a.test/2"])
    one, two = _claim(session, crawl)
    _record(session, crawl, one, Outcome(Kind.FETCHED, content_hash="h", item={"t": "x"}))
    _record(session, crawl, two, Outcome(Kind.FETCHED, content_hash="h", item={"t": "x"}))
    statuses = dict(session.execute(select(CrawlPage.url, CrawlPage.status)).all())
    assert statuses == {"http://a.test/1": "fetched", "http://a.test/2": "duplicate"}
    assert len(session.scalars(select(CrawlItem)).all()) == 1


def test_a_page_that_keeps_failing_is_a_dead_letter_for_its_url(session: Session) -> None:
    crawl = _crawl(session, ["http://a.test/bad"])
    (page,) = _claim(session, crawl)
    _record(session, crawl, page, Outcome(Kind.RETRY, error="HTTP 500", delay=0))
    (again,) = _claim(session, crawl)
    assert again.attempts == 1
    _record(session, crawl, again, Outcome(Kind.RETRY, error="HTTP 500", delay=0))
    row = session.scalars(select(CrawlPage)).one()
    assert (row.status, row.error) == ("failed", "HTTP 500 (after 2 attempts)")
    letter = session.scalars(select(DeadLetter)).one()
    assert letter.task_name == store.PAGE_TASK
    assert letter.reason == "page_failed"
    assert letter.kwargs == {"crawl_id": crawl.id, "url": "http://a.test/bad"}
    assert letter.owner == "alice"


def test_a_retry_after_holds_every_page_of_the_domain_without_an_attempt(session: Session) -> None:
    crawl = _crawl(session, ["http://a.test/1", "http://a.test/2", "http://b.test/1"])
    pages = _claim(session, crawl, want=1)
    _record(
        session,
        crawl,
        pages[0],
        Outcome(Kind.DEFER, error="HTTP 429", delay=30, domain_wide=True),
    )
    later = utcnow() + timedelta(seconds=25)
    rows = {row.url: row for row in session.scalars(select(CrawlPage))}
    assert rows[pages[0].url].attempts == 0
    assert rows[pages[0].url].deferrals == 1
    assert all(
        row.next_at.replace(tzinfo=later.tzinfo) > later
        for url, row in rows.items()
        if url.startswith("http://a.test")
    )
    assert [page.url for page in _claim(session, crawl)] == ["http://b.test/1"]
