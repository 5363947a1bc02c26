"""The crawl frontier in the database: claiming due pages, recording what became of them,
and finishing the crawl. Any number of crawl jobs work on one crawl at once: a page is
claimed by one UPDATE that only succeeds while it is still claimable, under a lock on the
crawl's row (which also keeps the max_pages count exact)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from conveyor.core import dead_letters
from conveyor.core.models import utcnow
from conveyor.workloads.scraping.frontier import Rules, host_of, url_hash
from conveyor.workloads.scraping.models import (
    Crawl,
    CrawlItem,
    CrawlPage,
    CrawlStatus,
    PageStatus,
    PageValidators,
)

PAGE_TASK = "conveyor.workloads.scraping.page"
MAX_LINKS_PER_PAGE = 1000
# Waits that spend no attempt (Retry-After, a banned proxy) end the page past this many.
MAX_DEFERRALS = 20


class PageFailed(Exception):
    """Why a page of a crawl failed for good (the dead letter's error)."""


class Kind(StrEnum):
    FETCHED = "fetched"
    NOT_MODIFIED = "not_modified"
    REDIRECTED = "redirected"  # the target joins the frontier (links) at the same depth
    FAILED = "failed"  # for good: 4xx, too large, a refused address
    RETRY = "retry"  # 5xx, timeout, connection error: spends an attempt
    DEFER = "defer"  # Retry-After, resting proxies: no attempt, but counted
    WAIT = "wait"  # a limit said not yet: back in line, nothing counted
    SKIPPED_ROBOTS = "skipped_robots"
    SKIPPED = "skipped"


@dataclass
class Outcome:
    kind: Kind
    error: str | None = None
    delay: float = 0.0
    domain_wide: bool = False  # WAIT or DEFER for every page of the domain, not just this one
    http_status: int | None = None
    final_url: str | None = None
    content_type: str | None = None
    content_hash: str | None = None
    size: int | None = None
    item: dict[str, Any] | None = None
    links: list[str] = field(default_factory=list)
    etag: str | None = None
    last_modified: str | None = None


@dataclass(frozen=True)
class CrawlInfo:
    id: str
    owner: str | None
    job_id: str | None
    kind: str
    status: str
    max_pages: int
    max_depth: int
    rate: str | None
    rules: Rules
    extract: dict[str, Any]
    rules_hash: str

    @property
    def owner_key(self) -> str:
        return self.owner or ""


@dataclass(frozen=True)
class PageRef:
    id: int
    url: str
    url_hash: str
    domain: str
    depth: int
    attempts: int
    deferrals: int


def lock(session: Session, crawl_id: str) -> None:
    """Take the crawl's row lock (a write lock on SQLite). Every write to a crawl's pages
    takes it first, so writers queue in one order and never deadlock over page rows."""
    session.execute(
        update(Crawl).where(Crawl.id == crawl_id).values(pages_claimed=Crawl.pages_claimed)
    )


def _lock_crawl(session: Session, crawl_id: str) -> Crawl | None:
    lock(session, crawl_id)
    return session.get(Crawl, crawl_id, populate_existing=True)


def _claimable(crawl_id: str, now: datetime) -> Any:
    return and_(
        CrawlPage.crawl_id == crawl_id,
        or_(
            and_(CrawlPage.status == PageStatus.QUEUED, CrawlPage.next_at <= now),
            # Claimed by a job that died: its lease ran out.
            and_(CrawlPage.status == PageStatus.FETCHING, CrawlPage.lease_until < now),
        ),
    )


def claim(
    session: Session, crawl_id: str, want: int, *, lease: float, per_domain: int
) -> list[PageRef]:
    """Up to `want` due pages, at most `per_domain` of any one domain, now this caller's
    until the lease ends. Commits."""
    now = utcnow()
    crawl = _lock_crawl(session, crawl_id)
    if crawl is None or crawl.status not in (CrawlStatus.QUEUED, CrawlStatus.RUNNING):
        session.rollback()
        return []
    budget = crawl.max_pages - crawl.pages_claimed
    # Pages of a domain already out (with any job) count against its cap.
    per: Counter[str] = Counter(
        dict(
            session.execute(
                select(CrawlPage.domain, func.count())
                .where(
                    CrawlPage.crawl_id == crawl_id,
                    CrawlPage.status == PageStatus.FETCHING,
                    CrawlPage.lease_until >= now,
                )
                .group_by(CrawlPage.domain)
            ).all()
        )
    )
    candidates = session.execute(
        select(CrawlPage.id, CrawlPage.domain, CrawlPage.counted)
        .where(_claimable(crawl_id, now))
        .order_by(CrawlPage.next_at, CrawlPage.id)
        .limit(want * 4)
    ).all()
    picked: list[int] = []
    uncounted: set[int] = set()
    for page_id, domain, counted in candidates:
        if len(picked) >= want or per[domain] >= per_domain:
            continue
        if not counted:
            if len(uncounted) >= budget:
                continue
            uncounted.add(page_id)
        per[domain] += 1
        picked.append(page_id)
    if not picked:
        session.rollback()
        return []
    rows = session.execute(
        update(CrawlPage)
        .where(CrawlPage.id.in_(picked), _claimable(crawl_id, now))
        .values(
            status=PageStatus.FETCHING,
            lease_until=now + timedelta(seconds=lease),
            counted=True,
        )
        .returning(
            CrawlPage.id,
            CrawlPage.url,
            CrawlPage.url_hash,
            CrawlPage.domain,
            CrawlPage.depth,
            CrawlPage.attempts,
            CrawlPage.deferrals,
        )
        .execution_options(synchronize_session=False)
    ).all()
    crawl.pages_claimed += sum(1 for row in rows if row.id in uncounted)
    session.commit()
    return [PageRef(*row) for row in rows]


def _bump(session: Session, crawl_id: str, **counts: int) -> None:
    session.execute(
        update(Crawl)
        .where(Crawl.id == crawl_id)
        .values({name: getattr(Crawl, name) + count for name, count in counts.items()})
    )


def insert_pages(
    session: Session, crawl_id: str, urls: list[str], depth: int, next_at: datetime | None = None
) -> int:
    """Add URLs to the frontier; one already there (normalised) is left as it is."""
    rows = [
        {
            "crawl_id": crawl_id,
            "url": url,
            "url_hash": url_hash(url),
            "domain": host_of(url),
            "depth": depth,
            "status": PageStatus.QUEUED,
            "next_at": next_at or utcnow(),
            "attempts": 0,
            "deferrals": 0,
            "counted": False,
        }
        for url in dict.fromkeys(urls)
    ]
    if not rows:
        return 0
    dialect = session.get_bind().dialect.name
    module = postgresql if dialect == "postgresql" else sqlite
    statement = module.insert(CrawlPage).values(rows).on_conflict_do_nothing()
    return len(session.scalars(statement.returning(CrawlPage.id)).all())


def validators(session: Session, crawl: CrawlInfo, page: PageRef) -> PageValidators | None:
    """What the last crawl of this page (same owner, same rules) kept, for a conditional GET."""
    found = session.get(PageValidators, (crawl.owner_key, page.url_hash))
    if found is None or found.rules_hash != crawl.rules_hash:
        return None
    session.expunge(found)
    return found


def _keep_validators(session: Session, crawl: CrawlInfo, page: PageRef, outcome: Outcome) -> None:
    if not (outcome.etag or outcome.last_modified):
        return
    values = {
        "etag": (outcome.etag or "")[:300] or None,
        "last_modified": (outcome.last_modified or "")[:64] or None,
        "content_hash": outcome.content_hash,
        "rules_hash": crawl.rules_hash,
        "links": outcome.links,
        "item": outcome.item,
        "fetched_at": utcnow(),
    }
    dialect = session.get_bind().dialect.name
    module = postgresql if dialect == "postgresql" else sqlite
    statement = module.insert(PageValidators).values(
        owner_key=crawl.owner_key, url_hash=page.url_hash, **values
    )
    session.execute(
        statement.on_conflict_do_update(index_elements=["owner_key", "url_hash"], set_=values)
    )


def _keep_content(session: Session, page: PageRef, values: dict[str, Any]) -> bool:
    """Write the page as kept; False if another page of the crawl holds its content."""
    try:
        with session.begin_nested():
            session.execute(
                update(CrawlPage)
                .where(CrawlPage.id == page.id, CrawlPage.status == PageStatus.FETCHING)
                .values(values)
            )
    except IntegrityError:
        return False
    return True


def _dead_letter(session: Session, crawl: CrawlInfo, page: PageRef, error: str) -> None:
    dead_letters.record(
        session,
        dead_letters.Failure(
            job_id=crawl.job_id or crawl.id,
            task_name=PAGE_TASK,
            queue="scraping",
            owner=crawl.owner,
            args=[],
            kwargs={"crawl_id": crawl.id, "url": page.url},
            exc=PageFailed(f"{page.url}: {error}"),
            traceback=None,
            reason="page_failed",
            attempts=page.attempts + 1,
        ),
    )


def record(
    session: Session, crawl: CrawlInfo, page: PageRef, outcome: Outcome, *, max_attempts: int
) -> None:
    """Write what became of a claimed page, its item and its new links. Commits."""
    lock(session, crawl.id)
    now = utcnow()
    values: dict[str, Any] = {"lease_until": None}
    kind = outcome.kind
    if kind is Kind.RETRY and page.attempts + 1 >= max_attempts:
        kind, outcome.error = Kind.FAILED, f"{outcome.error} (after {page.attempts + 1} attempts)"
        _dead_letter(session, crawl, page, outcome.error)
    if kind is Kind.DEFER and page.deferrals + 1 > MAX_DEFERRALS:
        kind, outcome.error = Kind.FAILED, f"{outcome.error} (deferred {MAX_DEFERRALS} times)"
        _dead_letter(session, crawl, page, outcome.error)
    counts: dict[str, int] = {}
    if kind in (Kind.RETRY, Kind.DEFER, Kind.WAIT):
        values.update(status=PageStatus.QUEUED, next_at=now + timedelta(seconds=outcome.delay))
        if kind is Kind.RETRY:
            values.update(attempts=page.attempts + 1, error=outcome.error)
            counts["pages_retried"] = 1
        elif kind is Kind.DEFER:
            values.update(deferrals=page.deferrals + 1, error=outcome.error)
        if outcome.domain_wide:
            # Every queued page of the domain waits too, so no job claims one only to wait.
            session.execute(
                update(CrawlPage)
                .where(
                    CrawlPage.crawl_id == crawl.id,
                    CrawlPage.domain == page.domain,
                    CrawlPage.status == PageStatus.QUEUED,
                    CrawlPage.next_at < values["next_at"],
                )
                .values(next_at=values["next_at"])
            )
    elif kind in (Kind.FETCHED, Kind.NOT_MODIFIED):
        status = PageStatus.NOT_MODIFIED if kind is Kind.NOT_MODIFIED else PageStatus.FETCHED
        values.update(
            status=status,
            http_status=outcome.http_status,
            final_url=outcome.final_url,
            content_type=outcome.content_type,
            content_hash=outcome.content_hash,
            size=outcome.size,
            fetched_at=now,
            error=None,
        )
        # The unique index on kept content says whether another page of the crawl has it.
        duplicate = not _keep_content(session, page, values)
        if duplicate:
            values["status"] = PageStatus.DUPLICATE
            counts["pages_duplicate"] = 1
        elif kind is Kind.NOT_MODIFIED:
            counts["pages_not_modified"] = 1
        counts["pages_fetched"] = 1
        if not duplicate:
            if outcome.item is not None:
                session.add(
                    CrawlItem(crawl_id=crawl.id, page_id=page.id, url=page.url, data=outcome.item)
                )
                counts["items"] = 1
            if page.depth < crawl.max_depth and outcome.links:
                insert_pages(session, crawl.id, outcome.links[:MAX_LINKS_PER_PAGE], page.depth + 1)
            if kind is Kind.FETCHED:
                _keep_validators(session, crawl, page, outcome)
    elif kind is Kind.REDIRECTED:
        values.update(
            status=PageStatus.REDIRECTED,
            http_status=outcome.http_status,
            final_url=outcome.final_url,
            fetched_at=now,
            error=None,
        )
        counts["pages_redirected"] = 1
        insert_pages(session, crawl.id, outcome.links[:1], page.depth)
    elif kind is Kind.FAILED:
        values.update(
            status=PageStatus.FAILED,
            error=outcome.error,
            http_status=outcome.http_status,
            fetched_at=now,
        )
        counts["pages_failed"] = 1
    else:
        status = PageStatus.SKIPPED_ROBOTS if kind is Kind.SKIPPED_ROBOTS else PageStatus.SKIPPED
        values.update(status=status, error=outcome.error, counted=False)
        counts["pages_skipped_robots" if kind is Kind.SKIPPED_ROBOTS else "pages_skipped"] = 1
        counts["pages_claimed"] = -1  # a page never fetched gives its place back
    session.execute(
        update(CrawlPage)
        .where(CrawlPage.id == page.id, CrawlPage.status == PageStatus.FETCHING)
        .values(values)
    )
    if counts:
        _bump(session, crawl.id, **counts)
    session.commit()


@dataclass(frozen=True)
class FrontierState:
    fetching: int  # claimed, lease not run out
    waiting: int  # queued pages that will be claimed (due now or later)
    next_at: datetime | None

    @property
    def finished(self) -> bool:
        return self.fetching == 0 and self.waiting == 0


def state(session: Session, crawl_id: str) -> FrontierState:
    crawl = session.get(Crawl, crawl_id, populate_existing=True)
    if crawl is None:
        return FrontierState(0, 0, None)
    now = utcnow()
    fetching = session.scalar(
        select(func.count())
        .select_from(CrawlPage)
        .where(
            CrawlPage.crawl_id == crawl_id,
            CrawlPage.status == PageStatus.FETCHING,
            CrawlPage.lease_until >= now,
        )
    )
    waiting_where = [CrawlPage.crawl_id == crawl_id, CrawlPage.status == PageStatus.QUEUED]
    if crawl.pages_claimed >= crawl.max_pages:
        waiting_where.append(CrawlPage.counted.is_(True))  # the rest will never be fetched
    waiting, next_at = session.execute(
        select(func.count(), func.min(CrawlPage.next_at)).where(*waiting_where)
    ).one()
    expired = session.scalar(
        select(func.count())
        .select_from(CrawlPage)
        .where(
            CrawlPage.crawl_id == crawl_id,
            CrawlPage.status == PageStatus.FETCHING,
            CrawlPage.lease_until < now,
        )
    )
    return FrontierState(int(fetching or 0), int(waiting or 0) + int(expired or 0), next_at)


def finish(session: Session, crawl_id: str) -> bool:
    """Mark the crawl done if nothing is left to fetch; True if this call did. Commits."""
    crawl = _lock_crawl(session, crawl_id)
    if (
        crawl is None
        or crawl.status != CrawlStatus.RUNNING
        or not state(session, crawl_id).finished
    ):
        session.rollback()
        return False
    left = session.execute(
        update(CrawlPage)
        .where(CrawlPage.crawl_id == crawl_id, CrawlPage.status == PageStatus.QUEUED)
        .values(status=PageStatus.SKIPPED, error="max_pages reached")
    )
    crawl.pages_skipped += int(left.rowcount or 0)  # type: ignore[attr-defined]
    crawl.status, crawl.finished_at = CrawlStatus.DONE, utcnow()
    session.commit()
    return True
