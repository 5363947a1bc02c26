"""HTTP routes of the scraping workload: crawls, single-page scrapes, and the proxy pool."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request, Response, status
from fastapi.responses import StreamingResponse

from conveyor.api.deps import AdminDep, Caller, CallerDep, SessionDep
from conveyor.api.idempotency import IdempotentRoute
from conveyor.api.paging import Offset
from conveyor.api.schemas import Problem
from conveyor.api.urls import path_to
from conveyor.core import jobs, ledger
from conveyor.core.db import session_scope
from conveyor.core.jobs import Submission, submit
from conveyor.core.models import utcnow
from conveyor.core.redis_client import get_redis
from conveyor.core.settings import get_settings, section
from conveyor.workloads.scraping import service
from conveyor.workloads.scraping.models import (
    FINISHED_CRAWL,
    Crawl,
    CrawlStatus,
    PageStatus,
    ScrapeProxy,
)
from conveyor.workloads.scraping.proxies import BadProxy, ProxyPool, parse_proxy
from conveyor.workloads.scraping.schemas import (
    CrawlAccepted,
    CrawlList,
    CrawlOut,
    CrawlRequest,
    PageList,
    ProxyList,
    ProxyOut,
    ProxyRequest,
    ScrapeOut,
    ScrapeRequest,
)
from conveyor.workloads.scraping.settings import ScrapingSettings

router = APIRouter(prefix="/api/v1", tags=["scraping"], route_class=IdempotentRoute)
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": Problem}}
# A scrape follows this many redirects (each target a page of its own, within its limits).
SCRAPE_REDIRECTS = 5
PageState = Literal[
    "queued",
    "fetching",
    "fetched",
    "not_modified",
    "duplicate",
    "redirected",
    "failed",
    "skipped_robots",
    "skipped",
]


def _not_found(what: str = "crawl") -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, f"{what} not found")


def _owned(session: SessionDep, crawl_id: str, caller: Caller, kind: str = "crawl") -> Crawl:
    crawl = service.get(session, crawl_id, caller.scope, kind)
    if crawl is None:
        raise _not_found(kind)
    return crawl


def _accepted(request: Request, crawl: Crawl, route: str, **params: str) -> dict[str, Any]:
    assert crawl.job_id is not None
    return {
        "id": crawl.id,
        "job_id": crawl.job_id,
        "status": crawl.status,
        "url": path_to(request, route, **params),
    }


def _start(session: SessionDep, crawl: Crawl) -> None:
    session.commit()
    try:
        submit(
            Submission(
                task_name=service.CRAWL_TASK,
                kwargs={"crawl_id": crawl.id, "part": 0},
                owner=crawl.owner,
                job_id=crawl.job_id,
            )
        )
    except Exception as exc:
        # The broker refused it: the row must not promise a crawl that will never run.
        crawl.status, crawl.error, crawl.finished_at = CrawlStatus.FAILED, str(exc), utcnow()
        session.commit()
        raise


def _checked(body: CrawlRequest | ScrapeRequest) -> service.Spec:
    fields: dict[str, Any]
    if isinstance(body, ScrapeRequest):
        fields = {
            "seeds": [body.url],
            "allowed_domains": [],
            "max_pages": 1 + SCRAPE_REDIRECTS,
            "max_depth": 0,
            "include": [],
            "exclude": [],
            "extract": body.extract,
            "rate": None,
        }
    else:
        fields = body.model_dump()
    try:
        return service.check(**fields, settings=get_settings(), scraping=section(ScrapingSettings))
    except service.InvalidCrawl as exc:
        field = "url" if isinstance(body, ScrapeRequest) and exc.field == "seeds[0]" else None
        message = str(exc) if field is None else "url" + str(exc)[len(exc.field) :]
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, message) from None


@router.post(
    "/crawls",
    response_model=CrawlAccepted,
    status_code=status.HTTP_202_ACCEPTED,
    responses={422: {"model": Problem}},
    summary="Start a crawl",
    description=(
        "Crawl from `seeds` within `allowed_domains`, up to `max_pages` pages and `max_depth` "
        "links deep, politely (per-domain rate and concurrency shared by every worker, "
        "robots.txt obeyed), extracting `extract`'s fields from every page. Send an "
        "`Idempotency-Key` to make a retried request safe."
    ),
)
def create_crawl(
    body: CrawlRequest, caller: CallerDep, session: SessionDep, request: Request
) -> dict[str, Any]:
    crawl = service.create(session, caller.owner, _checked(body))
    _start(session, crawl)
    return _accepted(request, crawl, "conveyor.crawl", crawl_id=crawl.id)


def _crawl_out(session: SessionDep, request: Request, crawl: Crawl) -> dict[str, Any]:
    items_url = path_to(request, "conveyor.crawl_items", crawl_id=crawl.id)
    return service.to_dict(session, crawl, items_url)


@router.get("/crawls", response_model=CrawlList, summary="Crawls, newest first")
def list_crawls(
    caller: CallerDep,
    session: SessionDep,
    request: Request,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Offset = 0,
) -> dict[str, Any]:
    found = service.listing(session, caller.scope, limit + 1, offset)
    return {
        "items": [_crawl_out(session, request, crawl) for crawl in found[:limit]],
        "next_offset": offset + limit if len(found) > limit else None,
    }


@router.get(
    "/crawls/{crawl_id}",
    name="conveyor.crawl",
    response_model=CrawlOut,
    responses=NOT_FOUND,
    summary="A crawl and its progress",
)
def get_crawl(
    crawl_id: str, caller: CallerDep, session: SessionDep, request: Request
) -> dict[str, Any]:
    crawl = _owned(session, crawl_id, caller)
    return _crawl_out(session, request, crawl)


@router.get(
    "/crawls/{crawl_id}/pages",
    response_model=PageList,
    responses=NOT_FOUND,
    summary="A crawl's pages, in the order they were found",
)
def list_pages(
    crawl_id: str,
    caller: CallerDep,
    session: SessionDep,
    status_filter: Annotated[PageState | None, Query(alias="status")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Offset = 0,
) -> dict[str, Any]:
    _owned(session, crawl_id, caller)
    found = service.pages(session, crawl_id, status_filter, limit + 1, offset)
    return {
        "items": [service.page_to_dict(page) for page in found[:limit]],
        "next_offset": offset + limit if len(found) > limit else None,
    }


@router.get(
    "/crawls/{crawl_id}/items",
    name="conveyor.crawl_items",
    responses={**NOT_FOUND, 200: {"content": {"application/x-ndjson": {}, "text/csv": {}}}},
    summary="Export the extracted items as JSON Lines or CSV",
)
def export_items(
    crawl_id: str,
    caller: CallerDep,
    session: SessionDep,
    format: Literal["jsonl", "csv"] = "jsonl",
) -> StreamingResponse:
    crawl = _owned(session, crawl_id, caller)
    fields = list(crawl.extract)

    def rows() -> Any:
        # Its own session: the request's closes when the route returns, before streaming.
        with session_scope() as export:
            if format == "csv":
                yield from service.export_csv(export, crawl_id, fields)
            else:
                yield from service.export_jsonl(export, crawl_id)

    media = "text/csv; charset=utf-8" if format == "csv" else "application/x-ndjson"
    name = f"crawl-{crawl_id}.{format}"
    headers = {"Content-Disposition": f'attachment; filename="{name}"'}
    return StreamingResponse(rows(), media_type=media, headers=headers)


@router.delete(
    "/crawls/{crawl_id}",
    response_model=CrawlOut,
    responses={**NOT_FOUND, 409: {"model": Problem}},
    summary="Cancel a crawl",
)
def cancel_crawl(
    crawl_id: str, caller: CallerDep, session: SessionDep, request: Request
) -> dict[str, Any]:
    crawl = _owned(session, crawl_id, caller)
    if crawl.status in FINISHED_CRAWL:
        raise HTTPException(status.HTTP_409_CONFLICT, f"crawl already {crawl.status}")
    service.cancel(session, crawl)
    session.commit()
    parts = section(ScrapingSettings).scrape_crawl_jobs
    for job_id in service.part_job_ids(crawl, parts):
        job = ledger.get_job(session, job_id, None)
        if job is not None:
            jobs.cancel(session, job)
    session.commit()
    return _crawl_out(session, request, crawl)


@router.post(
    "/scrapes",
    response_model=CrawlAccepted,
    status_code=status.HTTP_202_ACCEPTED,
    responses={422: {"model": Problem}},
    summary="Fetch one page and extract fields from it",
    description="The page is fetched as a crawl's would be: within every limit, robots.txt obeyed.",
)
def create_scrape(
    body: ScrapeRequest, caller: CallerDep, session: SessionDep, request: Request
) -> dict[str, Any]:
    crawl = service.create(session, caller.owner, _checked(body), kind="scrape")
    _start(session, crawl)
    return _accepted(request, crawl, "conveyor.scrape", scrape_id=crawl.id)


@router.get(
    "/scrapes/{scrape_id}",
    name="conveyor.scrape",
    response_model=ScrapeOut,
    responses=NOT_FOUND,
    summary="A scrape: the page's status and the extracted item",
)
def get_scrape(scrape_id: str, caller: CallerDep, session: SessionDep) -> dict[str, Any]:
    crawl = _owned(session, scrape_id, caller, kind="scrape")
    found = service.pages(session, crawl.id, None, 1 + SCRAPE_REDIRECTS, 0)
    # The page the redirects led to, if any did.
    page = next(
        (p for p in found if p.status != PageStatus.REDIRECTED), found[-1] if found else None
    )
    return {
        "id": crawl.id,
        "job_id": crawl.job_id,
        "status": crawl.status,
        "url": crawl.seeds[0],
        "page": service.page_to_dict(page) if page else None,
        "item": service.item_of(session, page.id) if page else None,
    }


def _pool(session: SessionDep) -> ProxyPool:
    scraping = section(ScrapingSettings)
    return ProxyPool(
        get_redis(),
        service.load_proxies(session, scraping),
        rotation=scraping.scrape_proxy_rotation,
        cooldown=scraping.scrape_proxy_cooldown_seconds,
    )


@router.get(
    "/scrape-proxies",
    response_model=ProxyList,
    summary="The proxy pool and each proxy's health (admin)",
)
def list_proxies(_: AdminDep, session: SessionDep) -> dict[str, Any]:
    return {"items": _pool(session).describe()}


@router.post(
    "/scrape-proxies",
    response_model=ProxyOut,
    status_code=status.HTTP_201_CREATED,
    responses={422: {"model": Problem}},
    summary="Add a proxy to the pool (admin); its URL is never shown again",
)
def add_proxy(body: ProxyRequest, _: AdminDep, session: SessionDep) -> dict[str, Any]:
    try:
        proxy = parse_proxy(body.url, "api")
    except BadProxy as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"url: {exc}") from None
    if session.get(ScrapeProxy, proxy.id) is None:
        session.add(ScrapeProxy(id=proxy.id, url=proxy.url, label=proxy.label))
        session.commit()
    described = {item["id"]: item for item in _pool(session).describe()}
    return described[proxy.id]


@router.delete(
    "/scrape-proxies/{proxy_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={**NOT_FOUND, 409: {"model": Problem}},
    summary="Remove a proxy added through the API (admin)",
)
def delete_proxy(proxy_id: str, _: AdminDep, session: SessionDep) -> Response:
    row = session.get(ScrapeProxy, proxy_id)
    if row is None:
        if any(item["id"] == proxy_id for item in _pool(session).describe()):
            raise HTTPException(
                status.HTTP_409_CONFLICT,
                "this proxy comes from CONVEYOR_SCRAPE_PROXIES; remove it there",
            )
        raise _not_found("proxy")
    session.delete(row)
    session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)
