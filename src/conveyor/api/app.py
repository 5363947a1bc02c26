"""The FastAPI application: routers, limits, error shapes and metrics."""

from __future__ import annotations

import gc
import logging
import time
from typing import Any

from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from kombu.exceptions import OperationalError as KombuOperationalError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import OperationalError as SQLAlchemyOperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from conveyor import __version__
from conveyor.api.limits import BodySizeLimit
from conveyor.api.mount import Conveyor
from conveyor.api.outage import FailFastDuringOutage
from conveyor.api.security import API_HEADERS, SecurityHeaders
from conveyor.core.metrics import http_latency, http_requests
from conveyor.core.redis_client import note_outage
from conveyor.core.settings import Settings
from conveyor.dashboard import Dashboard

log = logging.getLogger(__name__)
DASHBOARD_PREFIX = "/dashboard"

DESCRIPTION = """
Background jobs for FastAPI on Celery and Redis.

Every `/api` route needs `Authorization: Bearer <api key>` (create one with
`conveyor keys create NAME`). Errors are JSON: `{"detail": "..."}`.
"""


def _describe_location(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(part) for part in loc if part != "body"]
    return ".".join(parts) if parts else "body"


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    if any(error.get("type") == "json_invalid" for error in errors):
        first = next(error for error in errors if error.get("type") == "json_invalid")
        reason = (first.get("ctx") or {}).get("error", "")
        return JSONResponse(
            {"detail": f"request body is not valid JSON{': ' + reason if reason else ''}"},
            status_code=status.HTTP_400_BAD_REQUEST,
        )
    messages = []
    for error in errors:
        where = _describe_location(error.get("loc", ()))
        if error.get("type") == "extra_forbidden":
            messages.append(f"{where}: unknown field")
        else:
            messages.append(f"{where}: {error.get('msg')}")
    return JSONResponse(
        {
            "detail": "; ".join(messages),
            "errors": [
                {
                    "loc": list(error.get("loc", ())),
                    "msg": error.get("msg"),
                    "type": error.get("type"),
                }
                for error in errors
            ],
        },
        status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
    )


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    return JSONResponse(
        {"detail": exc.detail}, status_code=exc.status_code, headers=getattr(exc, "headers", None)
    )


async def _dependency_down(request: Request, exc: Exception) -> JSONResponse:
    """A broker or database outage is the server's problem, and temporary: 503, not 500."""
    # Redis errors count as the broker's: Redis is the broker, or stands beside it.
    what = "database" if isinstance(exc, SQLAlchemyOperationalError) else "broker"
    if isinstance(exc, KombuOperationalError | RedisConnectionError | RedisTimeoutError):
        note_outage()  # unreachable, not merely wrong: fail fast for a moment
    log.error("%s unavailable on %s %s: %s", what, request.method, request.url.path, exc)
    return JSONResponse(
        {"detail": f"the {what} is unavailable; try again shortly"},
        status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
        headers={"Retry-After": "5"},
    )


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return JSONResponse(
        {"detail": "internal error; the server log has the details"},
        status_code=status.HTTP_500_INTERNAL_SERVER_ERROR,
        headers=API_HEADERS,  # sent by the outermost middleware, outside SecurityHeaders
    )


class RequestMetrics:
    """Counts and times requests by route template (pure ASGI: streams pass through)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status_code = 500

        async def capture(message: Message) -> None:
            nonlocal status_code
            if message["type"] == "http.response.start":
                status_code = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            template = getattr(scope.get("route"), "path", "unmatched")
            method = scope.get("method", "")
            http_requests.labels(method, template, str(status_code)).inc()
            http_latency.labels(method, template).observe(time.perf_counter() - started)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Conveyor as its own application (`conveyor api`): the Conveyor router, its error shapes,
    body limits, outage handling, security headers and metrics."""
    conveyor = Conveyor(settings)
    app = FastAPI(
        lifespan=conveyor.lifespan,
        title="Conveyor",
        version=__version__,
        description=DESCRIPTION,
        openapi_tags=[
            {"name": "jobs", "description": "Every tracked job, its progress and its outcome."},
            {"name": "dead letters", "description": "Jobs that failed for good (admin)."},
            {"name": "diagnostics", "description": "Smoke-test a deployment (admin)."},
            {"name": "webhooks", "description": "Signed event deliveries to your endpoints."},
            {"name": "health", "description": "Probes and metrics; no key needed."},
        ],
    )
    add_exception_handlers(app)
    app.add_middleware(
        BodySizeLimit, max_bytes=conveyor.settings.max_body_bytes, per_prefix=conveyor.body_limits()
    )
    app.add_middleware(FailFastDuringOutage)
    app.add_middleware(RequestMetrics)
    docs = (app.docs_url, app.redoc_url, app.swagger_ui_oauth2_redirect_url)
    app.add_middleware(SecurityHeaders, docs_paths=[path for path in docs if path])
    app.include_router(conveyor.health_router)
    app.include_router(conveyor.router)
    app.include_router(Dashboard(conveyor).router, prefix=DASHBOARD_PREFIX)
    # Everything imported and built so far lives as long as the process: keep the collector
    # from walking it again (a full collection over it pauses a request for 100 ms or more).
    gc.freeze()
    return app


def add_exception_handlers(app: FastAPI) -> None:
    """Conveyor's error shapes: 400/422 naming the field, 503 with Retry-After on an outage."""
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    outages = (KombuOperationalError, RedisError, SQLAlchemyOperationalError)
    for outage in outages:
        app.add_exception_handler(outage, _dependency_down)
    app.add_exception_handler(Exception, _unexpected_error)
