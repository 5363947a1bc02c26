"""Jobs: read, list, cancel, and follow progress as server-sent events."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, status
from fastapi.responses import StreamingResponse

from conveyor.api import job_stream
from conveyor.api.deps import Caller, CallerDep, SessionDep
from conveyor.api.event_hub import EventHub
from conveyor.api.schemas import JobOut, JobPage, Problem
from conveyor.core import jobs, ledger, search
from conveyor.core.ledger import as_utc
from conveyor.core.models import JobState

router = APIRouter(prefix="/api/v1/jobs", tags=["jobs"])
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": Problem, "description": "No such job visible to this key."}
}


def _not_found() -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, "job not found")


@router.get("", response_model=JobPage, summary="List jobs, newest first")
def list_jobs(
    caller: CallerDep,
    session: SessionDep,
    state: Annotated[JobState | None, Query(description="Only jobs in this state.")] = None,
    queue: Annotated[str | None, Query(max_length=64, description="Only this queue.")] = None,
    task: Annotated[
        str | None,
        Query(max_length=200, description="Only this task; a trailing `*` matches a prefix."),
    ] = None,
    tag: Annotated[
        str | None, Query(max_length=100, description="Only jobs submitted with this tag.")
    ] = None,
    owner: Annotated[
        str | None, Query(max_length=120, description="Only this owner's jobs (admin keys).")
    ] = None,
    created_from: Annotated[
        datetime | None, Query(description="Created at or after this time.")
    ] = None,
    created_to: Annotated[datetime | None, Query(description="Created before this time.")] = None,
    parent_id: Annotated[
        str | None, Query(max_length=64, description="Only the steps of this workflow.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[
        str | None, Query(max_length=500, description="`next_cursor` of the previous page.")
    ] = None,
) -> dict[str, Any]:
    try:
        if parent_id:
            rows, next_cursor = ledger.list_jobs(
                session, owner=caller.scope, state=state, queue=queue, parent_id=parent_id,
                limit=limit, cursor=cursor,
            )  # fmt: skip
        else:
            where = search.JobFilter(
                state=state, queue=queue, task=task, tag=tag,
                # A plain key's own jobs, whatever owner it names.
                owner=caller.scope if caller.scope is not None else owner,
                created_from=as_utc(created_from), created_to=as_utc(created_to),
            )  # fmt: skip
            rows, next_cursor = search.search_jobs(session, where, limit=limit, cursor=cursor)
    except ledger.BadCursor as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from None
    return {"items": [_out(row, caller) for row in rows], "next_cursor": next_cursor}


@router.get(
    "/{job_id}",
    response_model=JobOut,
    responses=NOT_FOUND,
    summary="Get a job",
    name="conveyor.job",
)
def get_job(job_id: str, caller: CallerDep, session: SessionDep) -> dict[str, Any]:
    job = ledger.get_job(session, job_id, caller.scope)
    if job is None:
        raise _not_found()
    return _out(job, caller)


def _out(job: Any, caller: Caller) -> dict[str, Any]:
    shown = ledger.job_to_dict(job)
    if shown["error"] and not caller.sees_tracebacks:
        shown["error"] = {**shown["error"], "traceback": None}
    return shown


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
    return _out(job, caller)


@router.get(
    "/{job_id}/events",
    responses={
        **NOT_FOUND,
        429: {"model": Problem, "description": "This key has its most streams open."},
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
    description=(
        "At most CONVEYOR_SSE_MAX_STREAMS_PER_KEY streams per API key are open at once; "
        "one more is a 429 with Retry-After."
    ),
)
async def job_events(job_id: str, request: Request, caller: CallerDep) -> StreamingResponse:
    first = await job_stream.snapshot(job_id, caller.scope)
    if first is None:
        raise _not_found()
    # Put there by the Conveyor router: one hub per process, wherever the router is mounted.
    hub: EventHub = request.state.event_hub
    return await job_stream.open_stream(request, hub, job_id, caller.scope, caller.key_id, first)
