"""Schedules as data: create, change, pause, trigger and list them, and their run history.

Plain functions over a session; the caller commits. `scope` is the owner to filter by, None
for an admin (who sees every owner's schedules).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from conveyor.core.ledger import as_utc, iso
from conveyor.core.models import utcnow
from conveyor.core.schedules.models import Overlap, RunKind, RunState, Schedule, ScheduleRun
from conveyor.core.schedules.slots import ScheduleError, Timing, default_catch_up

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,199}$")
# Celery's own tasks need arguments only Celery gives; Conveyor's housekeeping is the system's.
FORBIDDEN_PREFIXES = ("celery.",)
ADMIN_ONLY_PREFIX = "conveyor."
# Workload tasks are what users start through the API anyway.
OPEN_PREFIX = "conveyor.workloads."

Submit = Callable[[str, str, list[Any], dict[str, Any], str], str]


class ScheduleNameTaken(ScheduleError):
    """Another schedule of the same owner has this name."""


@dataclass(frozen=True)
class Fields:
    """A schedule's changeable fields as a person gave them (None: unchanged or default)."""

    name: str | None = None
    task: str | None = None
    args: list[Any] | None = None
    kwargs: dict[str, Any] | None = None
    cron: str | None = None
    timezone: str | None = None
    every_seconds: int | None = None
    overlap: str | None = None
    catch_up_seconds: int | None = None
    enabled: bool | None = None


def job_id_for(schedule_id: str, slot: datetime) -> str:
    """The slot's job id, fixed before the job is submitted: a submit repeated after a crash
    finds the job already recorded instead of queueing a second one."""
    stamp = (as_utc(slot) or slot).strftime("%Y%m%dT%H%M%S.%fZ")
    return f"sch-{schedule_id}-{stamp}"  # 60 characters: job ids hold 64


def check_task(task: str, registered: Collection[str], *, is_admin: bool) -> None:
    """Registered tasks only; Celery's own never; Conveyor's housekeeping (`conveyor.*` outside
    `conveyor.workloads.*`) for admins only."""
    if task.startswith(FORBIDDEN_PREFIXES):
        raise ScheduleError(f"task: {task} is Celery's own and cannot be scheduled")
    if task not in registered:
        raise ScheduleError(
            f"task: {task!r} is not a registered task; check the name, and that its module is "
            "in CONVEYOR_TASK_MODULES"
        )
    if not is_admin and task.startswith(ADMIN_ONLY_PREFIX) and not task.startswith(OPEN_PREFIX):
        raise ScheduleError(f"task: {task} is one of Conveyor's own; only admins may schedule it")


def check_name(name: str) -> str:
    if not NAME_PATTERN.fullmatch(name):
        raise ScheduleError(
            "name: 1 to 200 letters, digits, '.', '_', ':' or '-', starting with a letter or digit"
        )
    return name


def check_overlap(overlap: str) -> str:
    if overlap not in {o.value for o in Overlap}:
        choices = ", ".join(o.value for o in Overlap)
        raise ScheduleError(f"overlap: {overlap!r} is not one of {choices}")
    return overlap


def timing_of(schedule: Schedule) -> Timing:
    return Timing(schedule.cron, schedule.timezone, schedule.every_seconds)


def catch_up_of(schedule: Schedule) -> int:
    if schedule.catch_up_seconds is not None:
        return schedule.catch_up_seconds
    return default_catch_up(schedule.cron, schedule.every_seconds)


def create(
    session: Session,
    owner: str,
    fields: Fields,
    *,
    registered: Collection[str],
    is_admin: bool,
    now: datetime | None = None,
) -> Schedule:
    if fields.name is None or fields.task is None:
        raise ScheduleError("name, task: both are required")
    check_task(fields.task, registered, is_admin=is_admin)
    timing = Timing(fields.cron, fields.timezone or "UTC", fields.every_seconds)
    _name_free(session, owner, check_name(fields.name), None)
    schedule = Schedule(
        id=uuid.uuid4().hex,
        owner=owner,
        name=fields.name,
        task=fields.task,
        args=list(fields.args or []),
        kwargs=dict(fields.kwargs or {}),
        cron=timing.cron,
        timezone=timing.timezone,
        every_seconds=timing.every_seconds,
        enabled=True if fields.enabled is None else fields.enabled,
        overlap=check_overlap(fields.overlap or Overlap.ALLOW),
        catch_up_seconds=fields.catch_up_seconds,
        next_slot=timing.next_after(now or utcnow()),
    )
    session.add(schedule)
    session.flush()
    return schedule


def update(
    session: Session,
    schedule: Schedule,
    fields: Fields,
    *,
    registered: Collection[str],
    is_admin: bool,
    now: datetime | None = None,
) -> Schedule:
    """Fields left as None stay. Giving `cron` drops `every_seconds` and the other way round."""
    if fields.cron is not None and fields.every_seconds is not None:
        raise ScheduleError("cron, every_seconds: give exactly one of them")
    if fields.task is not None:
        check_task(fields.task, registered, is_admin=is_admin)
        schedule.task = fields.task
    if fields.name is not None and fields.name != schedule.name:
        _name_free(session, schedule.owner, check_name(fields.name), schedule.id)
        schedule.name = fields.name
    cron, every = schedule.cron, schedule.every_seconds
    if fields.cron is not None:
        cron, every = fields.cron, None
    elif fields.every_seconds is not None:
        cron, every = None, fields.every_seconds
    timing = Timing(cron, fields.timezone or schedule.timezone, every)
    retimed = (timing.cron, timing.timezone, timing.every_seconds) != (
        schedule.cron,
        schedule.timezone,
        schedule.every_seconds,
    )
    schedule.cron, schedule.timezone, schedule.every_seconds = (
        timing.cron,
        timing.timezone,
        timing.every_seconds,
    )
    if fields.args is not None:
        schedule.args = list(fields.args)
    if fields.kwargs is not None:
        schedule.kwargs = dict(fields.kwargs)
    if fields.overlap is not None:
        schedule.overlap = check_overlap(fields.overlap)
    if fields.catch_up_seconds is not None:
        schedule.catch_up_seconds = fields.catch_up_seconds
    resumed = fields.enabled is True and not schedule.enabled
    if fields.enabled is not None:
        schedule.enabled = fields.enabled
    if retimed or resumed:
        # A new timing, or a resume, starts from now: the time paused is not caught up.
        schedule.next_slot = timing.next_after(now or utcnow())
    session.flush()
    return schedule


def set_enabled(
    session: Session, schedule: Schedule, enabled: bool, *, now: datetime | None = None
) -> Schedule:
    if enabled and not schedule.enabled:
        schedule.next_slot = timing_of(schedule).next_after(now or utcnow())
    schedule.enabled = enabled
    session.flush()
    return schedule


def get(session: Session, schedule_id: str, scope: str | None) -> Schedule | None:
    schedule = session.get(Schedule, schedule_id)
    if schedule is None or (scope is not None and schedule.owner != scope):
        return None
    return schedule


def find(session: Session, key: str, scope: str | None) -> Schedule | None:
    """By id, else by name (the caller's own; an admin's lookup by name must be unambiguous)."""
    found = get(session, key, scope)
    if found is not None:
        return found
    query = select(Schedule).where(Schedule.name == key)
    if scope is not None:
        query = query.where(Schedule.owner == scope)
    matches = list(session.scalars(query.limit(2)))
    return matches[0] if len(matches) == 1 else None


def list_schedules(
    session: Session, scope: str | None, *, limit: int = 100, offset: int = 0
) -> list[Schedule]:
    query = select(Schedule).order_by(Schedule.owner, Schedule.name)
    if scope is not None:
        query = query.where(Schedule.owner == scope)
    return list(session.scalars(query.limit(limit).offset(offset)))


def remove(session: Session, schedule: Schedule) -> None:
    session.execute(delete(ScheduleRun).where(ScheduleRun.schedule_id == schedule.id))
    session.delete(schedule)
    session.flush()


def runs(
    session: Session, schedule_id: str, *, limit: int = 50, offset: int = 0
) -> list[ScheduleRun]:
    """Newest slot first."""
    query = (
        select(ScheduleRun)
        .where(ScheduleRun.schedule_id == schedule_id)
        .order_by(ScheduleRun.slot.desc())
        .limit(limit)
        .offset(offset)
    )
    return list(session.scalars(query))


def count_runs(session: Session, schedule_id: str) -> int:
    query = select(func.count()).where(ScheduleRun.schedule_id == schedule_id)
    return int(session.scalar(query) or 0)


def trigger(
    session: Session, schedule: Schedule, submit: Submit, *, now: datetime | None = None
) -> ScheduleRun:
    """Run the schedule's task now, whatever its timing, overlap policy or pause; recorded in
    its history as a manual run."""
    slot = now or utcnow()
    run = ScheduleRun(
        schedule_id=schedule.id,
        slot=slot,
        kind=RunKind.MANUAL,
        state=RunState.CLAIMED,
        job_id=job_id_for(schedule.id, slot),
    )
    session.add(run)
    session.commit()
    assert run.job_id is not None
    run.job_id = submit(run.job_id, schedule.task, schedule.args, schedule.kwargs, schedule.owner)
    run.state = RunState.QUEUED
    session.flush()
    return run


def to_dict(schedule: Schedule) -> dict[str, Any]:
    return {
        "id": schedule.id,
        "source": "data",
        "owner": schedule.owner,
        "name": schedule.name,
        "task": schedule.task,
        "args": list(schedule.args),
        "kwargs": dict(schedule.kwargs),
        "cron": schedule.cron,
        "timezone": schedule.timezone,
        "every_seconds": schedule.every_seconds,
        "enabled": schedule.enabled,
        "overlap": schedule.overlap,
        "catch_up_seconds": catch_up_of(schedule),
        "next_slot": iso(schedule.next_slot) if schedule.enabled else None,
        "created_at": iso(schedule.created_at),
        "updated_at": iso(schedule.updated_at),
    }


def run_to_dict(run: ScheduleRun) -> dict[str, Any]:
    return {
        "slot": iso(run.slot),
        "job_id": run.job_id,
        "state": run.state,
        "kind": run.kind,
        "detail": run.detail,
        "created_at": iso(run.created_at),
    }


def _name_free(session: Session, owner: str, name: str, own_id: str | None) -> None:
    query = select(Schedule.id).where(Schedule.owner == owner, Schedule.name == name)
    taken = session.scalar(query)
    if taken is not None and taken != own_id:
        raise ScheduleNameTaken(f"name: you already have a schedule named {name!r}")
