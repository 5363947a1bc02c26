"""Request and response bodies of the crawls and scrapes API."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class CrawlRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "seeds": ["https://example.com/"],
                    "allowed_domains": ["example.com"],
                    "max_pages": 100,
                    "max_depth": 2,
                    "extract": {"title": "h1", "price": ".price"},
                }
            ]
        },
    )

    seeds: list[str] = Field(min_length=1, description="Where the crawl starts (http or https).")
    allowed_domains: list[str] = Field(
        default_factory=list,
        max_length=1000,
        description="Domains the crawl stays on (and their subdomains); default: the seeds'.",
    )
    max_pages: int = Field(default=100, ge=1, description="Most pages fetched.")
    max_depth: int = Field(default=2, ge=0, description="Links followed from a seed, at most.")
    include: list[str] = Field(
        default_factory=list,
        max_length=100,
        description="Regular expressions; when given, a URL must match one to be visited.",
    )
    exclude: list[str] = Field(
        default_factory=list, max_length=100, description="Regular expressions of URLs to skip."
    )
    extract: dict[str, Any] = Field(
        default_factory=dict,
        description=(
            'Field name -> CSS selector (first match\'s text), or {"selector": "a.next", '
            '"attr": "href", "all": true}. One item per page that matches anything.'
        ),
    )
    rate: str | None = Field(
        default=None,
        max_length=32,
        description="A lower per-domain rate for this crawl only (e.g. 1/5s), never a higher one.",
    )


class ScrapeRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"url": "https://example.com/", "extract": {"title": "h1"}}]
        },
    )

    url: str = Field(description="The page to fetch (http or https).")
    extract: dict[str, Any] = Field(default_factory=dict, description="As for crawls.")


class CrawlAccepted(BaseModel):
    id: str
    job_id: str
    status: str
    url: str


class CrawlOut(BaseModel):
    id: str
    job_id: str | None
    kind: str
    status: str
    seeds: list[str]
    allowed_domains: list[str]
    max_pages: int
    max_depth: int
    include: list[str]
    exclude: list[str]
    extract: dict[str, Any]
    rate: str | None
    pages_fetched: int
    pages_queued: int
    pages_in_flight: int
    pages_failed: int
    pages_skipped_robots: int
    pages_skipped: int
    pages_duplicate: int
    pages_not_modified: int
    pages_retried: int
    pages_redirected: int
    items: int
    error: str | None
    created_at: str | None
    started_at: str | None
    finished_at: str | None
    items_url: str


class CrawlList(BaseModel):
    items: list[CrawlOut]
    next_offset: int | None


class PageOut(BaseModel):
    id: int
    url: str
    depth: int
    status: str
    http_status: int | None
    final_url: str | None
    content_type: str | None
    size: int | None
    attempts: int = Field(description="Attempts spent: 5xx, timeouts, connection errors.")
    deferrals: int = Field(description="Waits that spent no attempt: Retry-After, proxies.")
    error: str | None
    fetched_at: str | None


class PageList(BaseModel):
    items: list[PageOut]
    next_offset: int | None


class ScrapeOut(BaseModel):
    id: str
    job_id: str | None
    status: str
    url: str
    page: PageOut | None
    item: dict[str, Any] | None


class ProxyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(
        max_length=2000, description="http://user:pass@host:port; the URL is never shown again."
    )


class ProxyOut(BaseModel):
    id: str
    label: str
    source: str
    state: str
    cooling_for_seconds: float
    failures_in_a_row: int
    requests: int
    bans: int
    errors: int
    last_error: str | None


class ProxyList(BaseModel):
    items: list[ProxyOut]
