"""Liveness, readiness and Prometheus metrics (no API key: probes and scrapers call these)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response, status
from prometheus_client import CONTENT_TYPE_LATEST

from conveyor.core.health import WORKER_PING_TIMEOUT, live_workers, readiness
from conveyor.core.metrics import exposition

router = APIRouter(tags=["health"])


@router.get("/health/live", summary="The API process is up")
def live() -> dict[str, str]:
    return {"status": "live"}


@router.get(
    "/health/ready",
    summary="The database and the broker answer (workers: /health/workers)",
    responses={
        200: {"content": {"application/json": {"example": {"status": "ready", "checks": {}}}}},
        503: {
            "description": "Something the system needs is down; `checks` says what.",
            "content": {
                "application/json": {
                    "example": {
                        "status": "unavailable",
                        "checks": {"broker": "broker unreachable: TimeoutError: Timeout"},
                    }
                }
            },
        },
    },
)
def ready(response: Response) -> dict[str, Any]:
    checks = readiness()
    failing = {name: reason for name, reason in checks.items() if reason}
    if failing:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
        return {"status": "unavailable", "checks": failing}
    return {"status": "ready", "checks": dict.fromkeys(checks, "ok")}


@router.get(
    "/health/workers",
    summary="The workers that answer a ping",
    responses={
        200: {"content": {"application/json": {"example": {"status": "ok", "workers": []}}}},
        503: {"description": "No worker answered: jobs are accepted but wait in their queues."},
    },
)
def workers(response: Response) -> dict[str, Any]:
    try:
        names = live_workers()
    except Exception as exc:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
        return {"status": "unavailable", "workers": [], "reason": f"{type(exc).__name__}: {exc}"}
    if not names:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
        reason = f"no worker answered a ping within {WORKER_PING_TIMEOUT:g}s"
        return {"status": "unavailable", "workers": [], "reason": reason}
    return {"status": "ok", "workers": names}


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
def metrics() -> Response:
    return Response(exposition(), media_type=CONTENT_TYPE_LATEST)
