"""Request and response bodies of the core API, with the examples /docs shows."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from conveyor.core.models import JobState

JOB_EXAMPLE: dict[str, Any] = {
    "id": "5b7c8d1e-1f0a-4a53-9a83-2f4f4c1f7d10",
    "name": "conveyor.diagnostics.run",
    "queue": "default",
    "state": "started",
    "progress": {"current": 2, "total": 5, "message": "attempt 1: step 2 of 5"},
    "attempts": 1,
    "result": None,
    "error": None,
    "created_at": "2026-11-25T10:00:00+00:00",
    "started_at": "2026-11-25T10:00:01+00:00",
    "finished_at": None,
    "parent_id": None,
    "root_id": None,
    "replay_of": None,
    "worker_host": "celery@worker-1",
    "args": [],
    "kwargs": {"steps": 5, "step_seconds": 1.0},
}


class Problem(BaseModel):
    detail: str = Field(examples=["job not found"])


class ProgressOut(BaseModel):
    current: int
    total: int | None
    message: str | None


class ErrorOut(BaseModel):
    type: str | None
    message: str | None
    traceback: str | None


class JobOut(BaseModel):  # type: ignore[no-redef]  # the pydantic plugin's __init__ has **kwargs too
    model_config = ConfigDict(json_schema_extra={"examples": [JOB_EXAMPLE]})

    id: str
    name: str
    queue: str
    state: JobState
    progress: ProgressOut
    attempts: int
    result: Any
    error: ErrorOut | None
    created_at: str | None
    started_at: str | None
    finished_at: str | None
    parent_id: str | None
    root_id: str | None
    replay_of: str | None
    worker_host: str | None
    args: list[Any]
    kwargs: dict[str, Any]


class JobPage(BaseModel):
    items: list[JobOut]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null on the last page."
    )


class Accepted(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "job_id": "5b7c8d1e-1f0a-4a53-9a83-2f4f4c1f7d10",
                    "status": "queued",
                    "url": "/api/v1/jobs/5b7c8d1e-1f0a-4a53-9a83-2f4f4c1f7d10",
                }
            ]
        }
    )

    job_id: str
    status: JobState
    url: str


class DiagnosticsRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"steps": 3, "step_seconds": 0.1, "fail_attempts": 0, "failure": "transient"}
            ]
        },
    )

    steps: int = Field(default=3, ge=1, le=1000, description="Progress steps to report.")
    step_seconds: float = Field(default=0.1, ge=0, le=60, description="Sleep per step.")
    fail_attempts: int = Field(
        default=0, ge=0, le=20, description="How many attempts fail before one succeeds."
    )
    failure: Literal["transient", "permanent"] = Field(
        default="transient",
        description="transient: retried with backoff; permanent: dead-lettered at once.",
    )
    tags: list[Annotated[str, Field(min_length=1, max_length=100)]] = Field(
        default_factory=list, max_length=10, description="Labels to find the job by."
    )


class DeadLetterError(BaseModel):
    type: str
    message: str
    traceback: str | None


class DeadLetterOut(BaseModel):  # type: ignore[no-redef]  # as JobOut
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "1f0a4a539a832f4f4c1f7d105b7c8d1e",
                    "job_id": "5b7c8d1e-1f0a-4a53-9a83-2f4f4c1f7d10",
                    "task_name": "conveyor.diagnostics.run",
                    "queue": "default",
                    "args": [],
                    "kwargs": {"steps": 1, "fail_attempts": 1, "failure": "permanent"},
                    "reason": "permanent_error",
                    "error": {
                        "type": "PermanentError",
                        "message": "diagnostics: permanent failure on attempt 1",
                        "traceback": "Traceback (most recent call last): ...",
                    },
                    "attempts": 1,
                    "created_at": "2026-11-25T10:00:00+00:00",
                    "failed_at": "2026-11-25T10:00:02+00:00",
                    "replayed_job_id": None,
                    "replayed_at": None,
                }
            ]
        }
    )

    id: str
    job_id: str
    task_name: str
    queue: str
    args: list[Any]
    kwargs: dict[str, Any]
    reason: str = Field(description="permanent_error, retries_exhausted, time_limit or redelivered")
    error: DeadLetterError
    attempts: int
    created_at: str | None
    failed_at: str | None
    replayed_job_id: str | None
    replayed_at: str | None


class DeadLetterPage(BaseModel):
    items: list[DeadLetterOut]


class Replayed(BaseModel):
    dead_letter_id: str
    job_id: str
    status: JobState
    url: str


class Purged(BaseModel):
    purged: int = Field(examples=[42])
    older_than_days: float = Field(examples=[30])
