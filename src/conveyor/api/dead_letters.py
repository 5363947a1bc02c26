"""Dead letters: jobs that failed for good. Admin keys only."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, Response, status

from conveyor.api.deps import AdminDep, SessionDep
from conveyor.api.idempotency import IdempotentRoute
from conveyor.api.paging import Offset
from conveyor.api.schemas import DeadLetterOut, DeadLetterPage, Problem, Purged, Replayed
from conveyor.api.urls import path_to
from conveyor.core import dead_letters, jobs
from conveyor.core.cleanup import prune_dead_letters
from conveyor.core.models import DeadLetter, JobState
from conveyor.core.settings import get_settings

router = APIRouter(
    prefix="/api/v1/dead-letters", tags=["dead letters"], route_class=IdempotentRoute
)
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": Problem, "description": "No such dead letter."}
}


def _letter(session: SessionDep, letter_id: str) -> DeadLetter:
    letter = dead_letters.get(session, letter_id)
    if letter is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "dead letter not found")
    return letter


@router.get("", response_model=DeadLetterPage, summary="List dead letters, newest first")
def list_dead_letters(
    _: AdminDep,
    session: SessionDep,
    task_name: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Offset = 0,
) -> dict[str, Any]:
    letters = dead_letters.list_letters(session, task_name=task_name, limit=limit, offset=offset)
    return {"items": [dead_letters.to_dict(letter, with_traceback=False) for letter in letters]}


@router.post(
    "/purge",
    response_model=Purged,
    summary="Delete dead letters older than N days",
    description="Deletes in batches, so a large purge never locks the table for long.",
)
def purge_dead_letters(
    _: AdminDep,
    session: SessionDep,
    older_than_days: Annotated[float, Query(ge=0, le=36500)],
) -> dict[str, Any]:
    removed = prune_dead_letters(session, older_than_days, get_settings().cleanup_batch_size)
    return {"purged": removed, "older_than_days": older_than_days}


@router.get(
    "/{letter_id}", response_model=DeadLetterOut, responses=NOT_FOUND, summary="Get a dead letter"
)
def get_dead_letter(letter_id: str, _: AdminDep, session: SessionDep) -> dict[str, Any]:
    return dead_letters.to_dict(_letter(session, letter_id))


@router.post(
    "/{letter_id}/replay",
    response_model=Replayed,
    status_code=status.HTTP_202_ACCEPTED,
    responses=NOT_FOUND,
    summary="Run the dead letter's task again as a new job",
)
def replay_dead_letter(
    letter_id: str, _: AdminDep, session: SessionDep, request: Request
) -> dict[str, Any]:
    letter = _letter(session, letter_id)
    job = jobs.replay(session, letter)
    # Commit before answering: the idempotency layer records the answer in its own
    # transaction, and SQLite would make it wait on this one.
    session.commit()
    return {
        "dead_letter_id": letter.id,
        "job_id": job.id,
        "status": JobState.QUEUED,
        "url": path_to(request, "conveyor.job", job_id=job.id),
    }


@router.delete(
    "/{letter_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=NOT_FOUND,
    summary="Delete a dead letter",
)
def delete_dead_letter(letter_id: str, _: AdminDep, session: SessionDep) -> Response:
    dead_letters.delete_letter(session, _letter(session, letter_id))
    return Response(status_code=status.HTTP_204_NO_CONTENT)
