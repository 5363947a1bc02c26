"""Queues: how many jobs wait in each, who consumes it, and pausing and resuming it. Admins only."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, status
from pydantic import BaseModel, ConfigDict, Field

from conveyor.api.deps import AdminDep, SessionDep
from conveyor.api.schemas import Problem
from conveyor.core import queue_control
from conveyor.core.redis_client import get_redis
from conveyor.core.workloads import UnknownQueue

router = APIRouter(prefix="/api/v1/queues", tags=["queues"])
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": Problem, "description": "The queue is not declared (CONVEYOR_QUEUES)."}
}
ADMINS_ONLY: dict[int | str, dict[str, Any]] = {
    403: {"model": Problem, "description": "Not an admin key."}
}
EXAMPLE: dict[str, Any] = {
    "name": "email",
    "depth": 42,
    "paused": True,
    "paused_at": "2026-11-28T09:30:00+00:00",
    "paused_by": "ops",
    "oldest_waiting_at": "2026-11-28T09:12:04+00:00",
    "consumers": [],
}


class QueueOut(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [EXAMPLE]})

    name: str
    depth: int | None = Field(
        description="Messages waiting in the broker; null when the broker is not Redis."
    )
    paused: bool
    paused_at: str | None
    paused_by: str | None = Field(description="The owner of the key that paused it.")
    oldest_waiting_at: str | None = Field(
        description="When the oldest job still queued in this queue was created."
    )
    consumers: list[str] = Field(description="Hostnames of live workers consuming it now.")


class QueuePage(BaseModel):
    items: list[QueueOut]


def _one(session: SessionDep, name: str) -> dict[str, Any]:
    return queue_control.queue_info(session, get_redis(), name).to_dict()


def _not_found(exc: UnknownQueue) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, str(exc))


@router.get(
    "",
    response_model=QueuePage,
    responses=ADMINS_ONLY,
    summary="List queues",
    description="Every declared queue, with its depth, pause and the workers consuming it.",
)
def list_queues(caller: AdminDep, session: SessionDep) -> dict[str, Any]:
    overview = queue_control.queue_overview(session, get_redis())
    return {"items": [queue.to_dict() for queue in overview]}


@router.post(
    "/{name}/pause",
    response_model=QueueOut,
    responses={**NOT_FOUND, **ADMINS_ONLY},
    summary="Pause a queue",
    description=(
        "Workers stop taking its jobs: running jobs finish, and jobs a worker already "
        "prefetched may still run. Stored, so workers started later honour it too."
    ),
)
def pause_queue(name: str, caller: AdminDep, session: SessionDep) -> dict[str, Any]:
    try:
        queue_control.pause(session, name, by=caller.owner)
    except UnknownQueue as exc:
        raise _not_found(exc) from None
    session.commit()
    queue_control.announce(name, paused=True)
    return _one(session, name)


@router.post(
    "/{name}/resume",
    response_model=QueueOut,
    responses={**NOT_FOUND, **ADMINS_ONLY},
    summary="Resume a paused queue",
)
def resume_queue(name: str, caller: AdminDep, session: SessionDep) -> dict[str, Any]:
    try:
        queue_control.resume(session, name)
    except UnknownQueue as exc:
        raise _not_found(exc) from None
    session.commit()
    queue_control.announce(name, paused=False)
    return _one(session, name)
