"""Serving the sandbox gateway with uvicorn, on CONVEYOR_SANDBOX_GATEWAY_HOST/PORT."""

from __future__ import annotations

from conveyor.core.settings import section
from conveyor.workloads.payments.settings import PaymentsSettings


def serve(host: str | None = None, port: int | None = None) -> None:
    import uvicorn

    from conveyor.core.settings import SettingsError
    from conveyor.local.ports import choose_port

    settings = section(PaymentsSettings)
    host = host or settings.sandbox_gateway_host
    try:
        port = choose_port(
            "CONVEYOR_SANDBOX_GATEWAY_PORT",
            host,
            port or settings.sandbox_gateway_port,
            pinned=True,
        )
    except SettingsError as exc:
        raise SystemExit(f"conveyor: {exc}") from None
    uvicorn.run(
        "conveyor.workloads.payments.sandbox.app:create_app",
        factory=True,
        host=host,
        port=port,
        log_level="warning",
        # One process: the sandbox keeps its charges in memory.
        workers=1,
    )
