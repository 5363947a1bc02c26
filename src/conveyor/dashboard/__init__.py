"""The dashboard: monitoring and control in the browser, on the ledger and the job figures.

    conveyor = Conveyor()
    app = FastAPI(lifespan=conveyor.lifespan)
    app.include_router(conveyor.router)
    app.include_router(Dashboard(conveyor).router, prefix="/dashboard")

`conveyor api` mounts it at /dashboard. Sign in with a Conveyor API key.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import APIRouter

if TYPE_CHECKING:
    from conveyor.api.mount import Conveyor

__all__ = ["Dashboard"]


class Dashboard:
    """The dashboard's routes for one process; `router` goes under a prefix of your choice."""

    def __init__(self, conveyor: Conveyor) -> None:
        from conveyor.dashboard import actions, pages

        self.router = APIRouter(include_in_schema=False)
        # Its live job pages share the API's one pub/sub connection.
        self.router.include_router(pages.build_router(conveyor.event_hub))
        self.router.include_router(actions.build_router())
