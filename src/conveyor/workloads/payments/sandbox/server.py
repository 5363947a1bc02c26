"""Serving the sandbox gateway with uvicorn, on CONVEYOR_SANDBOX_GATEWAY_HOST/PORT."""

from __future__ import annotations

from conveyor.core.settings import get_settings


def serve(host: str | None = None, port: int | None = None) -> None:
    import uvicorn

    settings = get_settings()
    uvicorn.run(
        "conveyor.workloads.payments.sandbox.app:create_app",
        factory=True,
        host=host or settings.sandbox_gateway_host,
        port=port or settings.sandbox_gateway_port,
        log_level="warning",
        # One process: the sandbox keeps its charges in memory.
        workers=1,
    )
