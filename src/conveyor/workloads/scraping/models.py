"""The tables of the scraping workload: crawls, their frontier of pages, the items extracted,
proxies added through the API, and the validators kept for conditional re-crawls."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import BigInteger, Boolean, ForeignKey, Index, Integer, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from conveyor.core.models import Base, utcnow


class CrawlStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    CANCELLED = "cancelled"
    FAILED = "failed"


FINISHED_CRAWL = frozenset({CrawlStatus.DONE, CrawlStatus.CANCELLED, CrawlStatus.FAILED})


class PageStatus(StrEnum):
    QUEUED = "queued"  # waiting for its turn (next_at), maybe after a failed attempt
    FETCHING = "fetching"  # claimed by a crawl job until lease_until
    FETCHED = "fetched"
    NOT_MODIFIED = "not_modified"  # 304 to a conditional request: the last crawl's data
    DUPLICATE = "duplicate"  # the same bytes as another page of this crawl
    FAILED = "failed"
    SKIPPED_ROBOTS = "skipped_robots"
    REDIRECTED = "redirected"  # its target is a page of the crawl (final_url)
    SKIPPED = "skipped"  # redirected outside the crawl's rules, past max_pages, cancelled


DONE_PAGE = frozenset(
    {
        PageStatus.FETCHED,
        PageStatus.NOT_MODIFIED,
        PageStatus.DUPLICATE,
        PageStatus.REDIRECTED,
        PageStatus.FAILED,
        PageStatus.SKIPPED_ROBOTS,
        PageStatus.SKIPPED,
    }
)


KEPT_CONTENT = "status IN ('fetched', 'not_modified')"


class Crawl(Base):
    __tablename__ = "conveyor_crawls"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner: Mapped[str | None] = mapped_column(String(120))
    kind: Mapped[str] = mapped_column(String(8), default="crawl")  # crawl | scrape
    status: Mapped[str] = mapped_column(String(16), default=CrawlStatus.QUEUED)
    seeds: Mapped[list[Any]] = mapped_column(default=list)
    allowed_domains: Mapped[list[Any]] = mapped_column(default=list)
    include: Mapped[list[Any]] = mapped_column(default=list)
    exclude: Mapped[list[Any]] = mapped_column(default=list)
    extract: Mapped[dict[str, Any]] = mapped_column(default=dict)
    max_pages: Mapped[int] = mapped_column(Integer)
    max_depth: Mapped[int] = mapped_column(Integer)
    rate: Mapped[str | None] = mapped_column(String(32))
    job_id: Mapped[str | None] = mapped_column(String(64))
    # Pages given a fetch (max_pages caps it); a page skipped by robots gives its place back.
    pages_claimed: Mapped[int] = mapped_column(Integer, default=0)
    pages_fetched: Mapped[int] = mapped_column(Integer, default=0)
    pages_failed: Mapped[int] = mapped_column(Integer, default=0)
    pages_skipped_robots: Mapped[int] = mapped_column(Integer, default=0)
    pages_skipped: Mapped[int] = mapped_column(Integer, default=0)
    pages_duplicate: Mapped[int] = mapped_column(Integer, default=0)
    pages_not_modified: Mapped[int] = mapped_column(Integer, default=0)
    pages_retried: Mapped[int] = mapped_column(Integer, default=0)
    pages_redirected: Mapped[int] = mapped_column(Integer, default=0)
    items: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column()
    finished_at: Mapped[datetime | None] = mapped_column()

    __table_args__ = (Index("ix_conveyor_crawls_owner_created", "owner", "created_at"),)


class CrawlPage(Base):
    __tablename__ = "conveyor_crawl_pages"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    crawl_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("conveyor_crawls.id", ondelete="CASCADE")
    )
    url: Mapped[str] = mapped_column(Text)
    url_hash: Mapped[str] = mapped_column(String(32))
    domain: Mapped[str] = mapped_column(String(255))
    depth: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[str] = mapped_column(String(16), default=PageStatus.QUEUED)
    next_at: Mapped[datetime] = mapped_column(default=utcnow)
    lease_until: Mapped[datetime | None] = mapped_column()
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # Waits that spent no attempt: Retry-After, a banned or dead proxy.
    deferrals: Mapped[int] = mapped_column(Integer, default=0)
    counted: Mapped[bool] = mapped_column(Boolean, default=False)
    http_status: Mapped[int | None] = mapped_column(Integer)
    final_url: Mapped[str | None] = mapped_column(Text)
    content_type: Mapped[str | None] = mapped_column(String(120))
    content_hash: Mapped[str | None] = mapped_column(String(64))
    size: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    fetched_at: Mapped[datetime | None] = mapped_column()

    __table_args__ = (
        Index("ux_conveyor_crawl_pages_url", "crawl_id", "url_hash", unique=True),
        Index("ix_conveyor_crawl_pages_due", "crawl_id", "status", "next_at"),
        # One kept page per content in a crawl, even when two jobs fetch copies at once.
        Index(
            "ux_conveyor_crawl_pages_content",
            "crawl_id",
            "content_hash",
            unique=True,
            postgresql_where=text(KEPT_CONTENT),
            sqlite_where=text(KEPT_CONTENT),
        ),
    )


class CrawlItem(Base):
    __tablename__ = "conveyor_crawl_items"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    crawl_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("conveyor_crawls.id", ondelete="CASCADE")
    )
    page_id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"))
    url: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)

    __table_args__ = (
        Index("ix_conveyor_crawl_items_crawl", "crawl_id", "id"),
        Index("ux_conveyor_crawl_items_page", "page_id", unique=True),
    )


class ScrapeProxy(Base):
    """A proxy added through the API. Its URL may hold credentials: never returned or logged."""

    __tablename__ = "conveyor_scrape_proxies"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    url: Mapped[str] = mapped_column(Text)
    label: Mapped[str] = mapped_column(String(300))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class PageValidators(Base):
    """What the last crawl of a URL saw, per owner: the validators for a conditional request,
    and the links and item to use again when the server answers 304 Not Modified."""

    __tablename__ = "conveyor_scrape_validators"

    owner_key: Mapped[str] = mapped_column(String(120), primary_key=True)  # "" for no owner
    url_hash: Mapped[str] = mapped_column(String(32), primary_key=True)
    etag: Mapped[str | None] = mapped_column(String(300))
    last_modified: Mapped[str | None] = mapped_column(String(64))
    content_hash: Mapped[str | None] = mapped_column(String(64))
    rules_hash: Mapped[str] = mapped_column(String(32))
    links: Mapped[list[Any]] = mapped_column(default=list)
    item: Mapped[dict[str, Any] | None] = mapped_column()
    fetched_at: Mapped[datetime] = mapped_column(default=utcnow)
