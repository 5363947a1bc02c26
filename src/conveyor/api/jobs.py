"""Jobs: read, list, cancel, and follow progress as server-sent events."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

import redis.asyncio as aioredis
from fastapi import APIRouter, HTTPException, Query, Request, status
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from conveyor.api.deps import CallerDep, SessionDep
from conveyor.api.schemas import JobOut, JobPage, Problem
from conveyor.core import jobs, ledger
from conveyor.core.db import session_scope
from conveyor.core.events import event_payload
from conveyor.core.models import TERMINAL_STATES, JobState
from conveyor.core.redis_client import job_channel
from conveyor.core.settings import get_settings

router = APIRouter(prefix="/api/v1/jobs", tags=["jobs"])
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": Problem, "description": "No such job visible to this key."}
}
# Re-read the ledger this often while streaming, in case a pub/sub message was missed.
SSE_RECHECK_SECONDS = 5.0


def _not_found() -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, "job not found")


@router.get("", response_model=JobPage, summary="List jobs, newest first")
def list_jobs(
    caller: CallerDep,
    session: SessionDep,
    state: Annotated[JobState | None, Query(description="Only jobs in this state.")] = None,
    queue: Annotated[str | None, Query(max_length=64, description="Only this queue.")] = None,
    parent_id: Annotated[
        str | None, Query(max_length=64, description="Only the steps of this workflow.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[
        str | None, Query(max_length=500, description="`next_cursor` of the previous page.")
    ] = None,
) -> dict[str, Any]:
    try:
        rows, next_cursor = ledger.list_jobs(
            session,
            owner=caller.scope,
            state=state,
            queue=queue,
            parent_id=parent_id,
            limit=limit,
            cursor=cursor,
        )
    except ledger.BadCursor as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from None
    return {"items": [ledger.job_to_dict(row) for row in rows], "next_cursor": next_cursor}


@router.get("/{job_id}", response_model=JobOut, responses=NOT_FOUND, summary="Get a job")
def get_job(job_id: str, caller: CallerDep, session: SessionDep) -> dict[str, Any]:
    job = ledger.get_job(session, job_id, caller.scope)
    if job is None:
        raise _not_found()
    return ledger.job_to_dict(job)


@router.delete(
    "/{job_id}",
    response_model=JobOut,
    responses={**NOT_FOUND, 409: {"model": Problem, "description": "The job already finished."}},
    summary="Cancel a queued or running job",
    description=(
        "A queued job never starts. A running job stops at its next progress report; "
        "a task that reports no progress runs to the end, but its job stays cancelled."
    ),
)
def cancel_job(job_id: str, caller: CallerDep, session: SessionDep) -> dict[str, Any]:
    job = ledger.get_job(session, job_id, caller.scope)
    if job is None:
        raise _not_found()
    if not jobs.cancel(session, job):
        session.refresh(job)
        raise HTTPException(
            status.HTTP_409_CONFLICT, f"job already finished with state '{job.state}'"
        )
    return ledger.job_to_dict(job)


def _load_snapshot(job_id: str, owner: str | None) -> dict[str, Any] | None:
    """The job as an event carries it, like the ones published: equal when nothing changed."""
    with session_scope() as session:
        job = ledger.get_job(session, job_id, owner)
        return event_payload(ledger.job_to_dict(job)) if job else None


async def _snapshot(job_id: str, owner: str | None) -> dict[str, Any] | None:
    result: dict[str, Any] | None = await run_in_threadpool(_load_snapshot, job_id, owner)
    return result


def _sse(snapshot: dict[str, Any], sequence: int) -> str:
    event = "progress" if snapshot["state"] == JobState.STARTED else snapshot["state"]
    return f"id: {sequence}\nevent: {event}\ndata: {json.dumps(snapshot, default=str)}\n\n"


async def _job_events(
    request: Request, job_id: str, owner: str | None, first: dict[str, Any]
) -> AsyncIterator[str]:
    client = aioredis.Redis.from_url(get_settings().redis, decode_responses=True)
    pubsub = client.pubsub()
    sequence = 0
    try:
        # Subscribe before re-reading, so nothing between the read and the subscribe is lost.
        await pubsub.subscribe(job_channel(job_id))
        snapshot = await _snapshot(job_id, owner) or first
        last_sent = snapshot
        sequence += 1
        yield _sse(snapshot, sequence)
        while snapshot["state"] not in TERMINAL_STATES:
            if await request.is_disconnected():
                return
            message = await pubsub.get_message(
                ignore_subscribe_messages=True, timeout=SSE_RECHECK_SECONDS
            )
            if message is not None:
                snapshot = json.loads(message["data"])
            else:
                snapshot = await _snapshot(job_id, owner) or snapshot
                if snapshot == last_sent:
                    yield ": keep-alive\n\n"
                    continue
            last_sent = snapshot
            sequence += 1
            yield _sse(snapshot, sequence)
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
        await client.aclose()


@router.get(
    "/{job_id}/events",
    responses={
        **NOT_FOUND,
        200: {
            "content": {"text/event-stream": {}},
            "description": (
                "Server-sent events: `progress` while running, then one of `succeeded`, "
                "`failed`, `cancelled`, `dead`; each `data` is the job as JSON, its error "
                "without the traceback (`GET /api/v1/jobs/{job_id}` has that). "
                "The stream ends when the job does."
            ),
        },
    },
    summary="Follow a job's progress (server-sent events)",
)
async def job_events(job_id: str, request: Request, caller: CallerDep) -> StreamingResponse:
    first = await _snapshot(job_id, caller.scope)
    if first is None:
        raise _not_found()
    return StreamingResponse(
        _job_events(request, job_id, caller.scope, first),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
