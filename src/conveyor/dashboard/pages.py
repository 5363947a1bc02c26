"""The dashboard's pages, their live streams (server-sent events) and its static files."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib.resources import files
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, HTTPException, Request, status
from fastapi.responses import HTMLResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from conveyor.api import shutdown
from conveyor.api.event_hub import EventHub
from conveyor.core.db import session_scope
from conveyor.core.redis_client import job_channel
from conveyor.core.settings import get_settings
from conveyor.dashboard import access, sessions
from conveyor.dashboard.access import SignedInDep
from conveyor.dashboard.render import render
from conveyor.dashboard.sessions import SignedIn
from conveyor.dashboard.views import VIEWS, Params, View, payments_enabled

STATIC = files("conveyor.dashboard") / "static"
STATIC_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
    ".md": "text/plain; charset=utf-8",
    ".svg": "image/svg+xml",
}
# With nothing new to send, a comment this often keeps proxies from closing the stream.
KEEPALIVE_SECONDS = 15.0


def base_path(request: Request) -> str:
    return str(request.url_for("dashboard.overview").path).rstrip("/")


def navigation(who: SignedIn) -> list[tuple[str, str]]:
    pages = [("overview", "Overview"), ("jobs", "Jobs")]
    if who.is_admin:
        pages += [("queues", "Queues"), ("workers", "Workers"), ("dead-letters", "Dead letters")]
    pages += [("schedules", "Schedules"), ("webhooks", "Webhooks")]
    if who.is_admin and payments_enabled():
        pages.append(("payments-review", "Payments review"))
    return pages


def _region(template: str) -> str:
    return f"regions/{template}"


def _context(request: Request, who: SignedIn, name: str, path: dict[str, str]) -> dict[str, Any]:
    base = base_path(request)
    query = request.url.query
    live_query = "&".join(part for part in (query, urlencode(path)) if part)
    return {
        "base": base,
        "who": who,
        "csrf": who.csrf,
        "page": name,
        "nav": navigation(who),
        "live_url": f"{base}/live/{name}" + (f"?{live_query}" if live_query else ""),
        "region": _region(VIEWS[name].template),
        "query": query,
    }


def _built(view: View, who: SignedIn, params: Params, template: str, ctx: dict[str, Any]) -> str:
    # Built and rendered in one session: the template reads rows' attributes.
    with session_scope() as session:
        return render(template, {**ctx, **view.build(session, who, params)})


async def show(request: Request, who: SignedIn, name: str, **path: str) -> HTMLResponse:
    view = VIEWS[name]
    params = {**request.query_params, **path}
    ctx = _context(request, who, name, path)
    try:
        if view.admin:
            access.require_admin(who)
        html = await run_in_threadpool(_built, view, who, params, view.template, ctx)
    except HTTPException as exc:
        # A person reads this: the message on a page of its own, with the same status.
        titles = {404: "Not found", 403: "Not allowed"}
        page = {**ctx, "title": titles.get(exc.status_code, "Cannot show this"),
                "message": exc.detail}  # fmt: skip
        return HTMLResponse(render("error.html", page), status_code=exc.status_code)
    return HTMLResponse(html, headers={"cache-control": "no-store"})


def _event(html: str) -> str:
    lines = "".join(f"data: {line}\n" for line in html.splitlines() or [""])
    return f"event: update\n{lines}\n"


def _signed_in_now(token: str | None) -> SignedIn | None:
    with session_scope() as session:
        return sessions.load(session, token)


async def _changes(
    request: Request, who: SignedIn, name: str, params: Params, hub: EventHub
) -> AsyncIterator[str]:
    view = VIEWS[name]
    ctx = _context(request, who, name, {})
    interval = get_settings().dashboard_live_seconds
    token = request.cookies.get(sessions.COOKIE)
    last, sent_at = "", time.monotonic()
    async with contextlib.AsyncExitStack() as stack:
        wake: asyncio.Queue[str] | None = None
        if view.follows_job and params.get("job_id"):
            wake = await stack.enter_async_context(hub.follow(job_channel(params["job_id"])))
        while not await request.is_disconnected() and not shutdown.stopping():
            # Signed out or revoked meanwhile: the stream ends with the session.
            if await run_in_threadpool(_signed_in_now, token) is None:
                return
            try:
                html = await run_in_threadpool(
                    _built, view, who, params, _region(view.template), ctx
                )
            except HTTPException:
                return  # the job or letter is gone
            if html != last:
                last, sent_at = html, time.monotonic()
                yield _event(html)
            elif time.monotonic() - sent_at > KEEPALIVE_SECONDS:
                sent_at = time.monotonic()
                yield ": keep-alive\n\n"
            if wake is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.get(), interval)
            else:
                await asyncio.sleep(interval)


# Each page's path and its view in VIEWS; path parameters reach the view by name.
PAGES = (
    ("/", "overview"),
    ("/jobs", "jobs"),
    ("/jobs/{job_id}", "job"),
    ("/queues", "queues"),
    ("/workers", "workers"),
    ("/dead-letters", "dead-letters"),
    ("/dead-letters/replay-matching", "replay-matching"),
    ("/dead-letters/{letter_id}", "dead-letter"),
    ("/schedules", "schedules"),
    ("/webhooks", "webhooks"),
    ("/payments-review", "payments-review"),
)


def _page(name: str) -> Callable[..., Awaitable[HTMLResponse]]:
    async def page(request: Request, who: SignedInDep) -> HTMLResponse:
        return await show(request, who, name, **request.path_params)

    return page


def build_router(hub: EventHub) -> APIRouter:
    router = APIRouter(include_in_schema=False)

    # Order matters: the fixed path before the one with a parameter that would take it.
    for path, name in PAGES:
        router.add_api_route(path, _page(name), methods=["GET"], name=f"dashboard.{name}")

    @router.get("/live/{name}")
    async def live(name: str, request: Request, who: SignedInDep) -> StreamingResponse:
        view = VIEWS.get(name)
        if view is None or name == "replay-matching":
            raise HTTPException(status.HTTP_404_NOT_FOUND, "no such live view")
        if view.admin:
            access.require_admin(who)
        params = dict(request.query_params)
        return StreamingResponse(
            _changes(request, who, name, params, hub),
            media_type="text/event-stream",
            headers={"cache-control": "no-store", "x-accel-buffering": "no"},
        )

    @router.get("/static/{name:path}")
    async def static(name: str) -> Response:
        parts = name.split("/")
        if any(part in ("", ".", "..") or part.startswith(".") for part in parts):
            raise HTTPException(status.HTTP_404_NOT_FOUND, "no such file")
        target = STATIC.joinpath(*parts)
        suffix = "." + name.rsplit(".", 1)[-1] if "." in name else ""
        if suffix not in STATIC_TYPES or not target.is_file():
            raise HTTPException(status.HTTP_404_NOT_FOUND, "no such file")
        return Response(
            target.read_bytes(),
            media_type=STATIC_TYPES[suffix],
            headers={"cache-control": "public, max-age=3600"},
        )

    return router
