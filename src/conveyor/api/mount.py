"""Conveyor inside a FastAPI app: its routes as a router, its lifespan, your authentication.

    conveyor = Conveyor(owner=current_user_id)      # or Conveyor() for Conveyor's API keys
    app = FastAPI(lifespan=conveyor.lifespan)
    app.include_router(conveyor.router)

`conveyor api` builds its own application from the same class (api/app.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request, status

from conveyor.api import (
    dead_letters,
    diagnostics,
    files,
    health,
    jobs,
    queues,
    schedules,
    webhooks,
)
from conveyor.api.deps import Caller
from conveyor.api.event_hub import EventHub
from conveyor.core import workloads
from conveyor.core.celery_app import use_request_timeouts
from conveyor.core.redis_client import fail_fast_during_outages
from conveyor.core.settings import Settings, get_settings, use_settings

OwnerDependency = Callable[..., Any]


class Conveyor:
    """Conveyor's API for one process: `router`, `health_router` and `lifespan`.

    `owner`: a FastAPI dependency of your app that returns the caller's owner id (a str), or a
    `Caller` (to mark admins, who see every owner's jobs), or raises 401 itself. Without it,
    callers authenticate with Conveyor's API keys (`conveyor keys create`).
    """

    def __init__(
        self, settings: Settings | None = None, *, owner: OwnerDependency | None = None
    ) -> None:
        if settings is not None:
            use_settings(settings)
        self.settings = settings or get_settings()
        # Unconfigured, fail here in one line rather than answer 500 to every request.
        _ = self.settings.broker
        # Requests never wait on a broker that does not answer: 503 within seconds.
        use_request_timeouts()
        fail_fast_during_outages()
        # One pub/sub connection for every event stream this process serves.
        self.event_hub = EventHub()
        self._owner = owner
        self.router = self._build_router()
        self.health_router = health.router

    def _build_router(self) -> APIRouter:
        # One level of included routers: a request is matched through every level.
        identify = [Depends(self._identify_dependency())]
        router = APIRouter()
        signed_in = [jobs, dead_letters, diagnostics, webhooks, files, schedules, queues]
        public = []
        for workload in workloads.api_modules(self.settings):
            signed_in.append(workload)
            # Routes called by other systems, which sign their requests instead.
            if getattr(workload, "public_router", None) is not None:
                public.append(workload.public_router)
        for public_router in public:
            router.include_router(public_router)
        for module in signed_in:
            router.include_router(module.router, dependencies=identify)
        return router

    def body_limits(self) -> dict[str, int]:
        """Path prefix → largest request body, for routes that take more than the default."""
        limits = {"/api/v1/files": self.settings.file_max_upload_bytes + 64 * 1024}
        for workload in workloads.api_modules(self.settings):
            own = getattr(workload, "body_limits", None)
            if own is not None:
                limits.update(own(self.settings))
        return limits

    def _identify_dependency(self) -> Callable[..., Any]:
        hub = self.event_hub
        owner = self._owner
        if owner is None:

            async def bind(request: Request) -> None:
                request.state.event_hub = hub

            return bind

        async def identify(request: Request, who: Any = Depends(owner)) -> None:
            request.state.event_hub = hub
            request.state.caller = _as_caller(who)

        return identify

    def add_exception_handlers(self, app: FastAPI) -> None:
        """Optional, app-wide: a broker or database outage answers 503 with Retry-After (not
        500), and validation errors answer 400/422 naming the field, as `conveyor api` does."""
        from conveyor.api.app import add_exception_handlers

        add_exception_handlers(app)

    @asynccontextmanager
    async def lifespan(self, app: FastAPI | None = None) -> AsyncIterator[None]:
        """FastAPI(lifespan=conveyor.lifespan), or `async with conveyor.lifespan():` in yours."""
        try:
            yield
        finally:
            await self.event_hub.close()


def _as_caller(who: Any) -> Caller:
    if isinstance(who, Caller):
        return who
    if isinstance(who, str) and who:
        return Caller(owner=who)
    # The app's dependency let an unknown caller through: refuse rather than share data.
    raise HTTPException(
        status.HTTP_401_UNAUTHORIZED,
        "not signed in",
        headers={"WWW-Authenticate": "Bearer"},
    )
