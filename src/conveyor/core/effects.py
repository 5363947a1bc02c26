"""Exactly-once effects for at-least-once tasks.

A task may run more than once: a redelivery after a lost worker, a retry after a failure
that came after the effect, the same request submitted twice. Wrap the effect:

    with effect_once(f"welcome-email:{user_id}") as effect:
        if not effect.done:
            effect.result = mailer.send(...)
    return effect.result

or, for a single call, `run_once(key, fn, *args, **kwargs)`.

The claim is an INSERT of the key into `task_effects`, committed in its own transaction
before the effect runs: the primary key lets exactly one run win. Losers see either the
stored result (`done`, skip the effect) or a claim still being worked on, and raise
EffectInProgress, a transient error, so their task retries later and finds the result.
If the effect raises, the claim is deleted, so the retry performs it.

Row states (no extra column needed): `result` is NULL while claimed and {"value": ...} once
done. A claim is abandoned (its worker died mid-effect) when the same job runs again, or
after `lease_seconds`, by default the task time limit: the hard limit kills any run
holding a claim longer than that, so a takeover never overlaps a live run.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, ParamSpec, TypeVar

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from conveyor.core.db import session_factory
from conveyor.core.errors import TransientError
from conveyor.core.models import TaskEffect
from conveyor.core.settings import get_settings

log = logging.getLogger(__name__)

MAX_KEY_LENGTH = 255
# Slack on top of the time limit for clocks that differ between worker machines.
LEASE_MARGIN_SECONDS = 30.0
# Rounds of insert / read / take over before calling the key contended.
MAX_CLAIM_ATTEMPTS = 5
# Pauses between attempts to record a finished effect: a lost record means a repeat.
COMPLETE_RETRY_DELAYS = (0.2, 1.0, 3.0)
# Fixed root for deterministic job ids: the same (namespace, key) gives the same id anywhere.
JOB_ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://conveyor.dev/ns/job-id")

P = ParamSpec("P")
R = TypeVar("R")
SessionMaker = Callable[[], Session]


class EffectInProgress(TransientError):
    """Another run holds the claim for this effect; retry later to find its result."""

    def __init__(self, key: str) -> None:
        super().__init__(f"effect {key!r} is being performed by another run; retry later")
        self.key = key


def deterministic_job_id(namespace: str, key: str) -> str:
    """A UUIDv5 from (namespace, key): submit with it twice and you get one job."""
    if not namespace or not key:
        raise ValueError("namespace and key must not be empty")
    return str(uuid.uuid5(uuid.uuid5(JOB_ID_NAMESPACE, namespace), key))


def validate_key(key: str) -> str:
    if not key:
        raise ValueError("an effect key must not be empty")
    if len(key) > MAX_KEY_LENGTH:
        raise ValueError(f"an effect key must be at most {MAX_KEY_LENGTH} characters")
    return key


def _as_utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _jsonable(value: Any) -> Any:
    # The ledger column is JSON; anything else is kept as its string form.
    return json.loads(json.dumps(value, default=str))


# --- the three steps, each its own committed transaction ---------------------------------


@dataclass(frozen=True)
class Claimed:
    """This run holds the claim made at `token` (the claim's created_at)."""

    token: datetime


@dataclass(frozen=True)
class AlreadyDone:
    result: Any


def claim(
    session: Session,
    key: str,
    *,
    task_name: str,
    job_id: str | None,
    lease_seconds: float,
    now: datetime | None = None,
) -> Claimed | AlreadyDone:
    """Claim `key`, or return the result stored by the run that did the effect.

    Raises EffectInProgress when a live claim of another job holds the key. Commits.
    """
    validate_key(key)
    for _ in range(MAX_CLAIM_ATTEMPTS):
        moment = now or datetime.now(UTC)
        try:
            session.execute(
                insert(TaskEffect).values(
                    key=key, task_name=task_name, job_id=job_id, created_at=moment
                )
            )
            session.commit()
            return Claimed(moment)
        except IntegrityError:
            session.rollback()
        row = session.execute(
            select(TaskEffect.result, TaskEffect.job_id, TaskEffect.created_at).where(
                TaskEffect.key == key
            )
        ).one_or_none()
        session.rollback()
        if row is None:
            continue  # released meanwhile: claim again
        if isinstance(row.result, dict) and "value" in row.result:
            return AlreadyDone(row.result["value"])
        same_job = job_id is not None and row.job_id == job_id
        expired = _as_utc(row.created_at) + timedelta(seconds=lease_seconds) <= moment
        if not (same_job or expired):
            raise EffectInProgress(key)
        # Take over an abandoned claim; the conditional UPDATE lets one taker win.
        taken = session.execute(
            update(TaskEffect)
            .where(
                TaskEffect.key == key,
                TaskEffect.result.is_(None),
                TaskEffect.created_at == row.created_at,
            )
            .values(task_name=task_name, job_id=job_id, created_at=moment)
        )
        session.commit()
        if int(getattr(taken, "rowcount", 0)) == 1:
            log.warning("effect %r: took over a claim abandoned by job %s", key, row.job_id)
            return Claimed(moment)
    raise EffectInProgress(key)


def complete(session: Session, key: str, token: datetime, result: Any) -> bool:
    """Record the effect as done with its result; False if the claim was taken from us."""
    done = session.execute(
        update(TaskEffect)
        .where(TaskEffect.key == key, TaskEffect.result.is_(None), TaskEffect.created_at == token)
        .values(result={"value": _jsonable(result)})
    )
    session.commit()
    return int(getattr(done, "rowcount", 0)) == 1


def release(session: Session, key: str, token: datetime) -> bool:
    """Drop our claim after a failed effect, so a retry can perform it."""
    gone = session.execute(
        delete(TaskEffect).where(
            TaskEffect.key == key, TaskEffect.result.is_(None), TaskEffect.created_at == token
        )
    )
    session.commit()
    return int(getattr(gone, "rowcount", 0)) == 1


def forget(session: Session, key: str) -> bool:
    """Delete a done (or claimed) effect, so the next run performs it again. Commits."""
    gone = session.execute(delete(TaskEffect).where(TaskEffect.key == key))
    session.commit()
    return int(getattr(gone, "rowcount", 0)) == 1


# --- the API for task authors --------------------------------------------------------------


@dataclass
class Effect:
    """Inside `effect_once`: skip the effect when `done`; else do it and set `result`.

    After the block, `result` is the value as stored (JSON), the same on every run.
    """

    key: str
    done: bool
    result: Any = None


def _running_task() -> tuple[str, str | None, float | None]:
    """(task name, job id, its own time limit) of the Celery task running here, if any."""
    from celery import current_task

    task = current_task
    # A proxy: falsy when no task is running in this thread.
    if not task or task.request.id is None:
        return "", None, None
    limit = getattr(task, "time_limit", None) or getattr(task.request, "timelimit", None)
    hard = limit[0] if isinstance(limit, list | tuple) else limit
    return str(task.name), str(task.request.id), float(hard) if hard else None


@contextmanager
def effect_once(
    key: str,
    *,
    sessions: SessionMaker | None = None,
    task_name: str | None = None,
    job_id: str | None = None,
    lease_seconds: float | None = None,
) -> Iterator[Effect]:
    """Perform the effect in the block at most once per key, across runs and workers.

    Task name and job id come from the running Celery task unless given. Raises
    EffectInProgress (transient: the task retries) while another run holds the key.
    """
    validate_key(key)
    running_name, running_job, running_limit = _running_task()
    if lease_seconds is None:
        limit = max(running_limit or 0.0, float(get_settings().task_time_limit))
        lease_seconds = limit + LEASE_MARGIN_SECONDS
    make_session = sessions or session_factory()
    with make_session() as session:
        outcome = claim(
            session,
            key,
            task_name=task_name or running_name or "-",
            job_id=job_id or running_job,
            lease_seconds=lease_seconds,
        )
    if isinstance(outcome, AlreadyDone):
        yield Effect(key=key, done=True, result=outcome.result)
        return
    effect = Effect(key=key, done=False)
    try:
        yield effect
    except BaseException:
        try:
            with make_session() as session:
                release(session, key, outcome.token)
        except Exception:
            # The claim stays until its lease runs out; the original error matters more.
            log.exception("effect %r: could not release the claim after a failure", key)
        raise
    effect.result = _jsonable(effect.result)
    _record(make_session, key, outcome.token, effect.result)
    effect.done = True


def _record(make_session: SessionMaker, key: str, token: datetime, result: Any) -> None:
    for delay in (*COMPLETE_RETRY_DELAYS, None):
        try:
            with make_session() as session:
                if not complete(session, key, token, result):
                    log.error("effect %r finished after its claim was taken over", key)
            return
        except Exception:
            if delay is None:
                raise
            log.warning("effect %r done but not yet recorded; retrying", key, exc_info=True)
            time.sleep(delay)


def run_once(key: str, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
    """Call `fn` once per key; later calls return the recorded result (as stored in JSON)."""
    with effect_once(key) as effect:
        if not effect.done:
            effect.result = fn(*args, **kwargs)
    result: R = effect.result
    return result
