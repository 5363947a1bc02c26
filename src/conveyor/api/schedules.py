"""Schedules as data: periodic jobs made, changed, paused and run through the API.

Code-defined schedules (Celery Beat's entries) are listed beside them, read-only.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, Response, status
from pydantic import BaseModel, ConfigDict, Field

from conveyor.api.deps import Caller, CallerDep, SessionDep
from conveyor.api.idempotency import IdempotentRoute
from conveyor.api.paging import Offset
from conveyor.api.schemas import Problem
from conveyor.core.celery_app import get_celery
from conveyor.core.schedules import code, service
from conveyor.core.schedules.models import Schedule
from conveyor.core.schedules.scheduler import submit_job
from conveyor.core.schedules.slots import ScheduleError

router = APIRouter(prefix="/api/v1/schedules", tags=["schedules"], route_class=IdempotentRoute)
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": Problem, "description": "No such schedule (or not yours)."}
}
INVALID: dict[int | str, dict[str, Any]] = {
    422: {
        "model": Problem,
        "description": (
            "Invalid cron, unknown time zone, neither or both of cron and every_seconds, an "
            "unknown task, or a task you may not schedule."
        ),
    }
}
READ_ONLY: dict[int | str, dict[str, Any]] = {
    409: {"model": Problem, "description": "A code-defined schedule: change it in code."}
}
OverlapPolicy = Literal["skip", "queue_one", "allow"]
EXAMPLE: dict[str, Any] = {
    "name": "daily-payments",
    "task": "billing.tasks.settle",
    "args": [],
    "kwargs": {"currency": "EUR"},
    "cron": "0 7 * * *",
    "timezone": "Europe/Berlin",
    "overlap": "skip",
}


class ScheduleCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [EXAMPLE, {"name": "heartbeat", "task": "app.ping", "every_seconds": 60}]
        },
    )

    name: str = Field(min_length=1, max_length=200, description="Unique among your schedules.")
    task: str = Field(min_length=1, max_length=200, description="A registered task's name.")
    args: list[Any] = Field(default_factory=list)
    kwargs: dict[str, Any] = Field(default_factory=dict)
    cron: str | None = Field(
        default=None, max_length=200, description="5 fields, in `timezone`; or every_seconds."
    )
    timezone: str = Field(default="UTC", max_length=64, description="An IANA time zone.")
    every_seconds: int | None = Field(
        default=None, ge=1, le=366 * 86400, description="Slots aligned to the Unix epoch."
    )
    overlap: OverlapPolicy = Field(
        default="allow", description="While an earlier run is still queued or running."
    )
    catch_up_seconds: int | None = Field(
        default=None,
        ge=0,
        le=366 * 86400,
        description=(
            "How late a slot may still run after downtime (default: 300 for cron, one "
            "interval up to 300 for every_seconds)."
        ),
    )
    enabled: bool = True


class ScheduleUpdate(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"cron": "30 6 * * 1-5"}]}
    )

    name: str | None = Field(default=None, min_length=1, max_length=200)
    task: str | None = Field(default=None, min_length=1, max_length=200)
    args: list[Any] | None = None
    kwargs: dict[str, Any] | None = None
    cron: str | None = Field(default=None, max_length=200)
    timezone: str | None = Field(default=None, max_length=64)
    every_seconds: int | None = Field(default=None, ge=1, le=366 * 86400)
    overlap: OverlapPolicy | None = None
    catch_up_seconds: int | None = Field(default=None, ge=0, le=366 * 86400)
    enabled: bool | None = None


class ScheduleOut(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"id": "9f1c2e7a", **EXAMPLE}]}
    )

    id: str
    source: Literal["data", "code"] = Field(description="`code`: a Beat entry, read-only.")
    owner: str | None
    name: str
    task: str | None
    args: list[Any] | None
    kwargs: dict[str, Any] | None
    cron: str | None
    timezone: str
    every_seconds: int | None
    enabled: bool
    overlap: str | None
    catch_up_seconds: int | None
    next_slot: str | None
    created_at: str | None
    updated_at: str | None


class SchedulePage(BaseModel):
    items: list[ScheduleOut]


class RunOut(BaseModel):
    slot: str | None = Field(description="The slot, UTC; a manual run's is when it was asked.")
    job_id: str | None
    state: str = Field(
        description="claimed, queued, skipped_overlap, skipped_missed or failed (see detail)."
    )
    kind: str = Field(description="scheduled or manual.")
    detail: str | None
    created_at: str | None


class Triggered(BaseModel):
    job_id: str
    slot: str | None


def _registered() -> set[str]:
    return set(get_celery().tasks.keys())


def _code_entries(caller: Caller) -> list[dict[str, Any]]:
    beat: dict[str, Any] = dict(get_celery().conf.beat_schedule or {})
    return code.entries(beat, with_arguments=caller.is_admin)


def _schedule(session: SessionDep, caller: Caller, schedule_id: str) -> Schedule:
    if schedule_id.startswith(code.ID_PREFIX):
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"{schedule_id} is defined in code (Celery Beat); change it there",
        )
    schedule = service.get(session, schedule_id, caller.scope)
    if schedule is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "schedule not found")
    return schedule


def _unprocessable(exc: ScheduleError) -> HTTPException:
    if isinstance(exc, service.ScheduleNameTaken):
        return HTTPException(status.HTTP_409_CONFLICT, str(exc))
    return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc))


def _fields(body: ScheduleCreate | ScheduleUpdate) -> service.Fields:
    return service.Fields(**body.model_dump(exclude_unset=isinstance(body, ScheduleUpdate)))


@router.get(
    "",
    response_model=SchedulePage,
    summary="List schedules",
    description=(
        "Code-defined schedules first (`source: code`, read-only), then yours by name; an "
        "admin sees every owner's. `source` filters."
    ),
)
def list_schedules(
    caller: CallerDep,
    session: SessionDep,
    source: Annotated[Literal["data", "code"] | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Offset = 0,
) -> dict[str, Any]:
    in_code = _code_entries(caller) if source != "data" else []
    items = in_code[offset : offset + limit]
    if source != "code" and len(items) < limit:
        rest = service.list_schedules(
            session,
            caller.scope,
            limit=limit - len(items),
            offset=max(0, offset - len(in_code)),
        )
        items += [service.to_dict(schedule) for schedule in rest]
    return {"items": items}


@router.post(
    "",
    response_model=ScheduleOut,
    status_code=status.HTTP_201_CREATED,
    responses={**INVALID, 409: {"model": Problem, "description": "The name is taken."}},
    summary="Create a schedule",
    description=(
        "`cron` (5 fields, in `timezone`) or `every_seconds`, not both. Non-admins may schedule "
        "registered tasks except Conveyor's own housekeeping (`conveyor.*` outside "
        "`conveyor.workloads.*`); nobody may schedule Celery's (`celery.*`)."
    ),
)
def create_schedule(body: ScheduleCreate, caller: CallerDep, session: SessionDep) -> dict[str, Any]:
    try:
        schedule = service.create(
            session, caller.owner, _fields(body), registered=_registered(), is_admin=caller.is_admin
        )
    except ScheduleError as exc:
        raise _unprocessable(exc) from None
    session.commit()
    return service.to_dict(schedule)


@router.get(
    "/{schedule_id}", response_model=ScheduleOut, responses=NOT_FOUND, summary="Get a schedule"
)
def get_schedule(schedule_id: str, caller: CallerDep, session: SessionDep) -> dict[str, Any]:
    if schedule_id.startswith(code.ID_PREFIX):
        for entry in _code_entries(caller):
            if entry["id"] == schedule_id:
                return entry
        raise HTTPException(status.HTTP_404_NOT_FOUND, "schedule not found")
    return service.to_dict(_schedule(session, caller, schedule_id))


@router.patch(
    "/{schedule_id}",
    response_model=ScheduleOut,
    responses={**NOT_FOUND, **INVALID, **READ_ONLY},
    summary="Change a schedule",
    description=(
        "Fields left out stay. A new timing (or `enabled: true` on a paused schedule) starts "
        "from now: slots from before are not caught up."
    ),
)
def update_schedule(
    schedule_id: str, body: ScheduleUpdate, caller: CallerDep, session: SessionDep
) -> dict[str, Any]:
    schedule = _schedule(session, caller, schedule_id)
    try:
        service.update(
            session, schedule, _fields(body), registered=_registered(), is_admin=caller.is_admin
        )
    except ScheduleError as exc:
        raise _unprocessable(exc) from None
    session.commit()
    return service.to_dict(schedule)


@router.post(
    "/{schedule_id}/pause",
    response_model=ScheduleOut,
    responses={**NOT_FOUND, **READ_ONLY},
    summary="Pause a schedule",
)
def pause_schedule(schedule_id: str, caller: CallerDep, session: SessionDep) -> dict[str, Any]:
    schedule = service.set_enabled(session, _schedule(session, caller, schedule_id), False)
    session.commit()
    return service.to_dict(schedule)


@router.post(
    "/{schedule_id}/resume",
    response_model=ScheduleOut,
    responses={**NOT_FOUND, **READ_ONLY},
    summary="Resume a paused schedule from its next slot",
)
def resume_schedule(schedule_id: str, caller: CallerDep, session: SessionDep) -> dict[str, Any]:
    schedule = service.set_enabled(session, _schedule(session, caller, schedule_id), True)
    session.commit()
    return service.to_dict(schedule)


@router.post(
    "/{schedule_id}/trigger",
    response_model=Triggered,
    status_code=status.HTTP_202_ACCEPTED,
    responses={**NOT_FOUND, **READ_ONLY},
    summary="Run the schedule's task now",
    description="Whatever its timing, pause or overlap policy; recorded as a manual run.",
)
def trigger_schedule(schedule_id: str, caller: CallerDep, session: SessionDep) -> dict[str, Any]:
    run = service.trigger(session, _schedule(session, caller, schedule_id), submit_job)
    session.commit()
    assert run.job_id is not None
    return {"job_id": run.job_id, "slot": service.run_to_dict(run)["slot"]}


@router.delete(
    "/{schedule_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={**NOT_FOUND, **READ_ONLY},
    summary="Delete a schedule and its run history",
)
def delete_schedule(schedule_id: str, caller: CallerDep, session: SessionDep) -> Response:
    service.remove(session, _schedule(session, caller, schedule_id))
    session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/{schedule_id}/runs",
    response_model=list[RunOut],
    responses={**NOT_FOUND, **READ_ONLY},
    summary="A schedule's runs, newest slot first, with their job ids",
)
def list_runs(
    schedule_id: str,
    caller: CallerDep,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Offset = 0,
) -> list[dict[str, Any]]:
    schedule = _schedule(session, caller, schedule_id)
    found = service.runs(session, schedule.id, limit=limit, offset=offset)
    return [service.run_to_dict(run) for run in found]
