"""The job ledger: the durable record of every tracked job and its state transitions.

Every transition is a conditional UPDATE, so a late or duplicate signal (a redelivered
message, a hook that runs after a cancel) can never move a finished job backwards.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from types import SimpleNamespace
from typing import Any, cast

from sqlalchemy import (
    Boolean,
    Connection,
    Table,
    and_,
    bindparam,
    case,
    func,
    insert,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.sql.dml import Update

from conveyor.core import outcome_listeners
from conveyor.core.driver_sql import DriverStatement
from conveyor.core.models import TERMINAL_STATES, Job, JobAttempt, JobState, JobTag, utcnow
from conveyor.core.progress import Progress
from conveyor.core.redaction import redact

MAX_RESULT_BYTES = 16_384
MAX_TRACEBACK_CHARS = 20_000
ACTIVE_STATES = (JobState.QUEUED, JobState.STARTED, JobState.RETRYING)


def as_utc(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; everything Conveyor stores is UTC."""
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def iso(value: datetime | None) -> str | None:
    stamp = as_utc(value)
    return stamp.isoformat() if stamp else None


def summarize_result(value: Any) -> Any:
    """A result small enough for the ledger; large results keep a readable preview."""
    safe = redact(value)
    encoded = json.dumps(safe, default=str)
    if len(encoded) <= MAX_RESULT_BYTES:
        return json.loads(encoded)
    return {"truncated": True, "preview": encoded[:2000], "size": len(encoded)}


def job_to_dict(job: Job | Mapping[str, Any]) -> dict[str, Any]:
    """The API's view of a job, from an ORM row or a Core row mapping."""
    source: Any = SimpleNamespace(**job) if isinstance(job, Mapping) else job
    return _snapshot(source)


def _snapshot(job: Any) -> dict[str, Any]:
    return {
        "id": job.id,
        "name": job.name,
        "queue": job.queue,
        "state": job.state,
        "progress": {
            "current": job.progress_current,
            "total": job.progress_total,
            "message": job.progress_message,
        },
        "attempts": job.attempts,
        "result": job.result,
        "error": (
            {
                "type": job.error_type,
                "message": job.error_message,
                "traceback": job.error_traceback,
            }
            if job.error_type
            else None
        ),
        "created_at": iso(job.created_at),
        "started_at": iso(job.started_at),
        "finished_at": iso(job.finished_at),
        "parent_id": job.parent_id,
        "root_id": job.root_id,
        "replay_of": job.replay_of,
        "worker_host": job.worker_host,
        "args": job.args,
        "kwargs": job.kwargs,
    }


@dataclass(frozen=True)
class NewJob:
    id: str
    name: str
    queue: str
    owner: str | None = None
    args: tuple[Any, ...] | list[Any] = ()
    kwargs: dict[str, Any] | None = None
    parent_id: str | None = None
    root_id: str | None = None
    workflow_stage: int | None = None
    replay_of: str | None = None
    state: JobState = JobState.QUEUED
    # True when the job's message is published right after it is recorded: the ledger then
    # keeps its arguments so a lost message can be published again (reconcile.py).
    republishable: bool = False
    # Labels to find the job by (`submit(..., tags=[...])`).
    tags: tuple[str, ...] = ()


def _row(new: NewJob) -> Job:
    return Job(
        id=new.id,
        name=new.name,
        queue=new.queue,
        owner=new.owner,
        state=new.state,
        args=redact(list(new.args)),
        kwargs=redact(dict(new.kwargs or {})),
        parent_id=new.parent_id,
        root_id=new.root_id or new.parent_id,
        workflow_stage=new.workflow_stage,
        replay_of=new.replay_of,
        payload=(
            {"args": list(new.args), "kwargs": dict(new.kwargs or {})}
            if new.republishable
            else None
        ),
        events_pending=False,
        progress_current=0,
        attempts=0,
        created_at=utcnow(),
        updated_at=utcnow(),
    )


def create_job(session: Session, new: NewJob) -> Job:
    job = _row(new)
    session.add(job)
    session.add_all(
        JobTag(job_id=new.id, tag=tag, created_at=job.created_at) for tag in dict.fromkeys(new.tags)
    )
    session.flush()
    return job


def insert_job(connection: Connection, new: NewJob) -> Job:
    """create_job for the submit path: Core INSERTs on the caller's connection, no ORM unit of
    work. The returned Job is not attached to any session."""
    job = _row(new)
    _INSERT_ONE.execute(connection, {column.key: getattr(job, column.key) for column in JOBS.c})
    tags = dict.fromkeys(new.tags)
    if tags:
        rows = [{"job_id": new.id, "tag": tag, "created_at": job.created_at} for tag in tags]
        connection.execute(_INSERT_TAGS, rows)
    return job


def insert_jobs(connection: Connection, news: list[NewJob]) -> list[Job]:
    """insert_job for many: one multi-row INSERT for the jobs, one for their tags."""
    jobs = [_row(new) for new in news]
    rows = [{column.key: getattr(job, column.key) for column in JOBS.c} for job in jobs]
    connection.execute(_INSERT_JOB, rows)
    tags = [
        {"job_id": new.id, "tag": tag, "created_at": job.created_at}
        for new, job in zip(news, jobs, strict=True)
        for tag in dict.fromkeys(new.tags)
    ]
    if tags:
        connection.execute(_INSERT_TAGS, tags)
    return jobs


def ensure_job(session: Session, new: NewJob) -> bool:
    """Insert the job unless it is already recorded; True when this call inserted it."""
    if session.get(Job, new.id) is not None:
        return False
    try:
        with session.begin_nested():
            session.add(_row(new))
    except IntegrityError:
        return False
    return True


def get_job(session: Session, job_id: str, owner: str | None = None) -> Job | None:
    """The job, or None if it does not exist or belongs to someone else (owner=None: any)."""
    job = session.get(Job, job_id)
    if job is None or (owner is not None and job.owner != owner):
        return None
    return job


def _when_ending(values: dict[str, Any], owner: Any) -> None:
    """A job that ends forgets its arguments and, in the same statement, flags its outcome
    events as pending (the outbox): only owned jobs a listener wants have anyone to tell."""
    if values.get("state") in TERMINAL_STATES:
        values["payload"] = None
        values["events_pending"] = outcome_listeners.pending_when(owner)


def _transition(
    session: Session, job_id: str, allowed: tuple[str, ...], **values: Any
) -> Job | None:
    """Apply `values` if the job is in an allowed state; the updated row, or None.

    UPDATE ... RETURNING: one round trip both moves the job and reads it back.
    """
    values.setdefault("updated_at", utcnow())
    _when_ending(values, Job.owner)
    statement = (
        update(Job)
        .where(Job.id == job_id, Job.state.in_(allowed))
        .values(**values)
        .returning(Job)
        .execution_options(synchronize_session=False, populate_existing=True)
    )
    return session.scalars(statement).first()


def mark_started(session: Session, new: NewJob, *, worker_host: str | None) -> Job | None:
    """Record an attempt starting. None means the job must not run (cancelled or finished)."""
    values = {
        "state": JobState.STARTED,
        "attempts": Job.attempts + 1,
        "started_at": utcnow(),
        "worker_host": worker_host,
    }
    job = _transition(session, new.id, ACTIVE_STATES, **values)
    if job is None and ensure_job(session, new):
        # Sent by something that did not record it (another app's plain Celery client).
        job = _transition(session, new.id, ACTIVE_STATES, **values)
    return job


# --- the hot path: Core statements on one connection ---------------------------------------
#
# Every tracked job starts and succeeds once; these two transitions dominate the ledger's
# cost, so they skip the ORM (no session, no identity map) and return plain row mappings.
# Each is one UPDATE ... RETURNING, atomic on its own: run them on `db.autocommit()`
# connections, which spare the BEGIN and COMMIT round trips.

JOBS = cast(Table, Job.__table__)
_INSERT_JOB = insert(JOBS)
# One job per submit: every column given, as plain SQL on psycopg (driver_sql.py).
_INSERT_ONE = DriverStatement(_INSERT_JOB, per_call=tuple(column.key for column in JOBS.c))
_INSERT_TAGS = insert(cast(Table, JobTag.__table__))


def _prebuilt(allowed: tuple[str, ...], **values: Any) -> Update:
    """An UPDATE … RETURNING built once, for the transitions every job makes: only its
    parameters change (job_id, now, and those named in `values`), so SQLAlchemy neither
    rebuilds it nor computes its cache key again per job."""
    values.setdefault("updated_at", bindparam("now", type_=JOBS.c.updated_at.type))
    _when_ending(values, JOBS.c.owner)
    # The allowed states are our own constants: written into the SQL, not expanded per call.
    states = ", ".join(f"'{JobState(state).value}'" for state in allowed)
    return (
        update(JOBS)
        .where(JOBS.c.id == bindparam("job_id"), text(f"{JOBS.c.state.name} IN ({states})"))
        .values(**values)
        .returning(*JOBS.c)
    )


_START_ATTEMPT = DriverStatement(
    _prebuilt(
        ACTIVE_STATES,
        state=JobState.STARTED,
        attempts=JOBS.c.attempts + 1,
        started_at=bindparam("now", type_=JOBS.c.started_at.type),
        worker_host=bindparam("worker_host", type_=JOBS.c.worker_host.type),
    ),
    per_call=("job_id", "now", "worker_host"),
    relaxed=True,
)


def _run_prebuilt(
    connection: Connection, statement: DriverStatement, job_id: str, **parameters: Any
) -> dict[str, Any] | None:
    return statement.first(connection, {"job_id": job_id, "now": utcnow(), **parameters})


def start_attempt(
    connection: Connection, job_id: str, *, worker_host: str | None
) -> dict[str, Any] | None:
    """mark_started for a job already in the ledger; None: missing, cancelled or finished."""
    return _run_prebuilt(connection, _START_ATTEMPT, job_id, worker_host=worker_host)


def _success_values(result: Any) -> dict[str, Any]:
    return {
        "state": JobState.SUCCEEDED,
        "result": summarize_result(result),
        "finished_at": utcnow(),
        # Errors of earlier attempts no longer describe the job.
        "error_type": None,
        "error_message": None,
        "error_traceback": None,
    }


def _unless_carried(column: str, parameter: str) -> Any:
    """A progress column the ending sets only when it carries the job's unwritten progress."""
    carried = bindparam("has_progress", type_=Boolean())
    value = bindparam(parameter, type_=JOBS.c[column].type)
    return case((carried, value), else_=JOBS.c[column])


_SUCCESS_PARAMETERS = {
    **_success_values(None),
    "result": bindparam("result", type_=JOBS.c.result.type),
    "finished_at": bindparam("now", type_=JOBS.c.finished_at.type),
    "progress_current": _unless_carried("progress_current", "current"),
    "progress_total": _unless_carried("progress_total", "total"),
    "progress_message": _unless_carried("progress_message", "message"),
}
_PROGRESS_PARAMETERS = ("has_progress", "current", "total", "message")


@lru_cache(maxsize=4)
def _finish_success(conditions: tuple[Any, ...]) -> DriverStatement:
    """Built again when the listeners change: its outbox flag names what they want."""
    return DriverStatement(
        _prebuilt(ACTIVE_STATES, **_SUCCESS_PARAMETERS),
        per_call=("job_id", "now", "result", *_PROGRESS_PARAMETERS),
    )


def finish_success(
    connection: Connection, job_id: str, result: Any, progress: Progress | None = None
) -> dict[str, Any] | None:
    """The job succeeded, with its last `progress` if it was not written yet (progress.py).
    The row's `events_pending` says whether anyone is to be told."""
    statement = _finish_success(outcome_listeners.conditions())
    return _run_prebuilt(
        connection,
        statement,
        job_id,
        result=summarize_result(result),
        has_progress=progress is not None,
        current=progress.current if progress else None,
        total=progress.total if progress else None,
        message=_message(progress.message) if progress else None,
    )


def _message(message: str | None) -> str | None:
    return (message or None) and message[:500]


_RECORD_PROGRESS = DriverStatement(
    _prebuilt(
        (JobState.STARTED,),
        progress_current=bindparam("current", type_=JOBS.c.progress_current.type),
        progress_total=bindparam("total", type_=JOBS.c.progress_total.type),
        progress_message=bindparam("message", type_=JOBS.c.progress_message.type),
    ),
    per_call=("job_id", "now", "current", "total", "message"),
    relaxed=True,
)


def record_progress(
    connection: Connection, job_id: str, current: int, total: int | None, message: str | None
) -> dict[str, Any] | None:
    """mark_progress on the hot path: a task reporting progress does it many times."""
    return _run_prebuilt(
        connection,
        _RECORD_PROGRESS,
        job_id,
        current=current,
        total=total,
        message=_message(message),
    )


def mark_progress(
    session: Session, job_id: str, current: int, total: int | None, message: str | None
) -> Job | None:
    return _transition(
        session,
        job_id,
        (JobState.STARTED,),
        progress_current=current,
        progress_total=total,
        progress_message=_message(message),
    )


def _error_values(exc: BaseException, traceback: str | None) -> dict[str, Any]:
    return {
        "error_type": type(exc).__name__,
        "error_message": str(exc)[:5000] or type(exc).__name__,
        "error_traceback": traceback[-MAX_TRACEBACK_CHARS:] if traceback else None,
    }


def _record_attempt(session: Session, job: Job | None, outcome: str) -> None:
    """Keep a failed attempt's error: the job's row only holds the latest one."""
    if job is None or job.attempts < 1:
        return
    session.merge(
        JobAttempt(
            job_id=job.id,
            attempt=job.attempts,
            outcome=outcome,
            error_type=job.error_type,
            error_message=job.error_message,
            error_traceback=job.error_traceback,
            worker_host=job.worker_host,
            started_at=job.started_at,
            finished_at=utcnow(),
        )
    )


def mark_retrying(
    session: Session, job_id: str, exc: BaseException, traceback: str | None
) -> Job | None:
    job = _transition(
        session,
        job_id,
        (JobState.STARTED, JobState.QUEUED),
        state=JobState.RETRYING,
        **_error_values(exc, traceback),
    )
    _record_attempt(session, job, JobState.RETRYING)
    return job


def mark_succeeded(session: Session, job_id: str, result: Any) -> Job | None:
    return _transition(session, job_id, ACTIVE_STATES, **_success_values(result))


def mark_failed(
    session: Session,
    job_id: str,
    exc: BaseException,
    traceback: str | None,
    *,
    state: JobState = JobState.DEAD,
) -> Job | None:
    job = _transition(
        session,
        job_id,
        ACTIVE_STATES,
        state=state,
        finished_at=utcnow(),
        **_error_values(exc, traceback),
    )
    _record_attempt(session, job, state)
    return job


def mark_cancelled(session: Session, job_id: str) -> Job | None:
    return _transition(
        session, job_id, ACTIVE_STATES, state=JobState.CANCELLED, finished_at=utcnow()
    )


def cancel_later_stages(session: Session, parent_id: str, after_stage: int) -> int:
    """In a chain or chord, steps after a failed one will never run: say so."""
    result = session.execute(
        update(Job)
        .where(
            Job.parent_id == parent_id,
            Job.workflow_stage > after_stage,
            Job.state == JobState.QUEUED,
        )
        .values(state=JobState.CANCELLED, finished_at=utcnow(), updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0))


def refresh_parent(session: Session, parent_id: str) -> Job | None:
    """Derive a workflow's state and progress from its children."""
    parent = session.get(Job, parent_id)
    if parent is None:
        return None
    counts: dict[str, int] = dict(
        session.execute(
            select(Job.state, func.count()).where(Job.parent_id == parent_id).group_by(Job.state)
        ).all()
    )
    total = sum(counts.values())
    finished = sum(counts.get(state, 0) for state in TERMINAL_STATES)
    failed = counts.get(JobState.DEAD, 0) + counts.get(JobState.FAILED, 0)
    values: dict[str, Any] = {
        "progress_current": finished,
        "progress_total": total,
        "progress_message": f"{finished} of {total} steps finished",
        "updated_at": utcnow(),
    }
    if total and finished == total:
        if failed:
            values["state"] = JobState.FAILED
        elif counts.get(JobState.CANCELLED, 0):
            values["state"] = JobState.CANCELLED
        else:
            values["state"] = JobState.SUCCEEDED
        values["finished_at"] = utcnow()
        if parent.state != values["state"]:
            _when_ending(values, Job.owner)
    elif finished or counts.get(JobState.STARTED) or counts.get(JobState.RETRYING):
        values["state"] = JobState.STARTED
        if parent.started_at is None:
            values["started_at"] = utcnow()
    if parent.state in TERMINAL_STATES and parent.state != values.get("state"):
        return parent
    session.execute(
        update(Job)
        .where(Job.id == parent_id)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    session.expire_all()
    return session.get(Job, parent_id)


class BadCursor(ValueError):
    pass


def encode_cursor(job: Job) -> str:
    return encode_position(job.created_at, job.id)


def encode_position(when: datetime, row_id: str) -> str:
    """A page cursor: the last row's time and id, opaque to clients."""
    stamp = as_utc(when)
    assert stamp is not None
    raw = json.dumps([stamp.isoformat(), row_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        stamp, job_id = json.loads(raw)
        return datetime.fromisoformat(stamp), str(job_id)
    except (binascii.Error, ValueError, TypeError) as exc:
        raise BadCursor("cursor is not one this API issued; start again without it") from exc


def list_jobs(
    session: Session,
    *,
    owner: str | None,
    state: str | None = None,
    queue: str | None = None,
    parent_id: str | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> tuple[list[Job], str | None]:
    """Newest first; the cursor is the last row's (created_at, id), stable under inserts."""
    query = select(Job)
    if owner is not None:
        query = query.where(Job.owner == owner)
    if state:
        query = query.where(Job.state == state)
    if queue:
        query = query.where(Job.queue == queue)
    if parent_id:
        query = query.where(Job.parent_id == parent_id)
    if cursor:
        stamp, last_id = decode_cursor(cursor)
        query = query.where(
            or_(
                Job.created_at < stamp,
                and_(Job.created_at == stamp, Job.id < last_id),
            )
        )
    rows = list(
        session.scalars(query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1))
    )
    next_cursor = encode_cursor(rows[limit - 1]) if len(rows) > limit else None
    return rows[:limit], next_cursor


def count_by_state(session: Session) -> dict[str, int]:
    rows = session.execute(select(Job.state, func.count()).group_by(Job.state)).all()
    return {str(state): int(count) for state, count in rows}
