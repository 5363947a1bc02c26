"""The sandbox gateway over HTTP, Stripe-shaped: `Idempotency-Key` on every POST.

    POST /v1/charges              {"amount", "currency", "payment_method", "customer_id"}
    GET  /v1/charges/by-key/{k}   the status check: the charge made under key k, or 404
    POST /v1/refunds              {"charge", "amount"}
    GET  /v1/refunds/by-key/{k}
    GET  /stats?key=              counts of real charges (for tests and benchmarks)
    PUT  /config                  {"latency_ms", "error_rate", "slow_seconds", "send_events"}

Charge and refund events are posted, signed (Standard Webhooks), to
CONVEYOR_SANDBOX_WEBHOOK_URL when it is set.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Annotated, Any

import httpx
from fastapi import FastAPI, Header, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from conveyor.core.settings import section
from conveyor.webhooks.signing import signature_headers
from conveyor.workloads.payments.sandbox.core import Config, Reply, SandboxCore
from conveyor.workloads.payments.settings import PaymentsSettings

log = logging.getLogger(__name__)
# Seconds between the attempts to post one event.
EVENT_RETRY_DELAYS = (0.5, 2.0, 5.0)
KeyHeader = Annotated[str | None, Header(alias="Idempotency-Key")]


class ConfigIn(BaseModel):
    latency_ms: float | None = Field(default=None, ge=0, le=60_000)
    error_rate: float | None = Field(default=None, ge=0, le=1)
    slow_seconds: float | None = Field(default=None, ge=0, le=600)
    send_events: bool | None = None


def create_app(
    settings: PaymentsSettings | None = None, core: SandboxCore | None = None
) -> FastAPI:
    settings = settings or section(PaymentsSettings)
    core = core or SandboxCore(
        Config(
            latency_ms=settings.sandbox_latency_ms,
            error_rate=settings.sandbox_error_rate,
            slow_seconds=settings.sandbox_slow_seconds,
        )
    )
    secret = settings.payments_gateway_webhook_secret
    webhook_url = settings.sandbox_webhook_url
    app = FastAPI(title="Conveyor sandbox payment gateway", version="1")
    app.state.core = core
    pending: set[asyncio.Task[None]] = set()

    async def answer(reply: Reply) -> JSONResponse:
        if webhook_url and secret and reply.events and core.config.send_events:
            for event in reply.events:
                task = asyncio.create_task(
                    _post_event(webhook_url, secret.get_secret_value(), event)
                )
                pending.add(task)
                task.add_done_callback(pending.discard)
        wait = core.config.latency_ms / 1000 + reply.delay
        if wait > 0:
            await asyncio.sleep(wait)
        return JSONResponse(reply.body, status_code=reply.status_code)

    def missing_key() -> JSONResponse:
        body = {"error": {"code": "idempotency_key_missing", "message": "send Idempotency-Key"}}
        return JSONResponse(body, status_code=400)

    async def params_of(request: Request) -> dict[str, Any] | None:
        try:
            body = json.loads(await request.body())
        except ValueError:
            return None
        return body if isinstance(body, dict) else None

    @app.post("/v1/charges")
    async def create_charge(request: Request, key: KeyHeader = None) -> JSONResponse:
        if not key:
            return missing_key()
        params = await params_of(request)
        if params is None:
            return JSONResponse({"error": {"code": "invalid_json"}}, status_code=400)
        return await answer(core.create_charge(key, params))

    @app.get("/v1/charges/by-key/{key}")
    async def find_charge(key: str) -> JSONResponse:
        return await answer(core.find_charge(key))

    @app.post("/v1/refunds")
    async def create_refund(request: Request, key: KeyHeader = None) -> JSONResponse:
        if not key:
            return missing_key()
        params = await params_of(request)
        if params is None:
            return JSONResponse({"error": {"code": "invalid_json"}}, status_code=400)
        return await answer(core.create_refund(key, params))

    @app.get("/v1/refunds/by-key/{key}")
    async def find_refund(key: str) -> JSONResponse:
        return await answer(core.find_refund(key))

    @app.get("/stats")
    def stats(key: str | None = None) -> dict[str, Any]:
        return core.stats(key)

    @app.put("/config")
    def configure(body: ConfigIn) -> dict[str, Any]:
        for name, value in body.model_dump(exclude_none=True).items():
            setattr(core.config, name, value)
        return vars(core.config)

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


async def _post_event(url: str, secret: str, event: dict[str, Any]) -> None:
    """Post one signed event, retrying a few times; the receiver dedupes by event id."""
    body = json.dumps(event, separators=(",", ":"))
    async with httpx.AsyncClient(timeout=10) as client:
        for delay in (*EVENT_RETRY_DELAYS, None):
            headers = {
                "content-type": "application/json",
                **signature_headers(secret, event["id"], body),
            }
            try:
                response = await client.post(url, content=body, headers=headers)
                if response.status_code < 300:
                    return
                log.warning("event %s: webhook answered %s", event["id"], response.status_code)
            except httpx.HTTPError as exc:
                log.warning("event %s: webhook failed: %s", event["id"], exc)
            if delay is None:
                return
            await asyncio.sleep(delay)
