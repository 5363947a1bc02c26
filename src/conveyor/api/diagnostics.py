"""The diagnostics job, for smoke tests of a deployment. Admin keys only."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, status
from starlette.concurrency import run_in_threadpool

from conveyor.api.deps import AdminDep
from conveyor.api.idempotency import IdempotentRoute
from conveyor.api.schemas import Accepted, DiagnosticsRequest
from conveyor.api.urls import path_to
from conveyor.core.jobs import Submission, submit
from conveyor.core.models import JobState
from conveyor.diagnostics.tasks import TASK_NAME

# IdempotentRoute: a retried POST with the same Idempotency-Key gets the same job back.
router = APIRouter(prefix="/api/v1/diagnostics", tags=["diagnostics"], route_class=IdempotentRoute)


@router.post(
    "/jobs",
    response_model=Accepted,
    status_code=status.HTTP_202_ACCEPTED,
    summary="Start a diagnostics job",
    description=(
        "Runs `steps` steps of `step_seconds` each, reporting progress after each, and fails "
        "its first `fail_attempts` attempts: `transient` failures are retried with backoff "
        "(up to 5 retries, then a dead letter), a `permanent` one is dead-lettered at once. "
        "With an `Idempotency-Key` header, a retry answers with the first job again."
    ),
)
async def start_diagnostics(
    body: DiagnosticsRequest, caller: AdminDep, request: Request
) -> dict[str, Any]:
    job = await run_in_threadpool(
        submit,
        Submission(
            task_name=TASK_NAME,
            kwargs=body.model_dump(exclude={"tags"}),
            owner=caller.owner,
            tags=body.tags,
        ),
    )
    url = path_to(request, "conveyor.job", job_id=job.id)
    return {"job_id": job.id, "status": JobState.QUEUED, "url": url}
