"""While Redis is away, API routes that write answer 503 at once instead of each waiting out a
publish timeout; reads go on from the ledger (Redis-backed limits fail open meanwhile)."""

from __future__ import annotations

import math

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from conveyor.core.redis_client import outage_remaining


class FailFastDuringOutage:
    """Pure ASGI. Health probes still go through: they are how the outage is seen to end."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        remaining = outage_remaining() if scope["type"] == "http" else 0.0
        writes = scope.get("method") not in {"GET", "HEAD", "OPTIONS"}
        if remaining and writes and str(scope.get("path", "")).startswith("/api/"):
            response = JSONResponse(
                {"detail": "the broker is unavailable; try again shortly"},
                status_code=503,
                headers={"Retry-After": str(max(1, math.ceil(remaining)))},
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)
