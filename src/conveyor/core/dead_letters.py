"""The dead-letter store: jobs that failed for good, kept with what is needed to replay them.

A dead letter keeps the task's real arguments (a replay needs them); readers see them
through `redact`, like the ledger.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from conveyor.core.ledger import MAX_TRACEBACK_CHARS, iso
from conveyor.core.metrics import dead_letters_total
from conveyor.core.models import DeadLetter, Job, utcnow
from conveyor.core.redaction import redact

# The shortest id prefix the CLI accepts for a dead letter.
MIN_PREFIX_CHARS = 4


@dataclass(frozen=True)
class Failure:
    job_id: str
    task_name: str
    queue: str
    owner: str | None
    args: list[Any]
    kwargs: dict[str, Any]
    exc: BaseException
    traceback: str | None
    reason: str
    attempts: int


def record(session: Session, failure: Failure) -> DeadLetter:
    job = session.get(Job, failure.job_id)
    letter = DeadLetter(
        id=uuid.uuid4().hex,
        job_id=failure.job_id,
        task_name=failure.task_name,
        queue=failure.queue,
        owner=failure.owner if failure.owner is not None else (job.owner if job else None),
        args=list(failure.args),
        kwargs=dict(failure.kwargs),
        error_type=type(failure.exc).__name__,
        error_message=(str(failure.exc) or type(failure.exc).__name__)[:5000],
        error_traceback=failure.traceback[-MAX_TRACEBACK_CHARS:] if failure.traceback else None,
        reason=failure.reason,
        attempts=failure.attempts,
        job_created_at=job.created_at if job else None,
        failed_at=utcnow(),
    )
    session.add(letter)
    session.flush()
    dead_letters_total.labels(failure.task_name, failure.reason).inc()
    return letter


def to_dict(letter: DeadLetter, *, with_traceback: bool = True) -> dict[str, Any]:
    return {
        "id": letter.id,
        "job_id": letter.job_id,
        "task_name": letter.task_name,
        "queue": letter.queue,
        "args": redact(letter.args),
        "kwargs": redact(letter.kwargs),
        "reason": letter.reason,
        "error": {
            "type": letter.error_type,
            "message": letter.error_message,
            "traceback": letter.error_traceback if with_traceback else None,
        },
        "attempts": letter.attempts,
        "created_at": iso(letter.job_created_at),
        "failed_at": iso(letter.failed_at),
        "replayed_job_id": letter.replayed_job_id,
        "replayed_at": iso(letter.replayed_at),
    }


def get(session: Session, letter_id: str, owner: str | None = None) -> DeadLetter | None:
    letter = session.get(DeadLetter, letter_id)
    if letter is None or (owner is not None and letter.owner != owner):
        return None
    return letter


@dataclass(frozen=True)
class PrefixMatch:
    """What an id or id prefix names: `letter` when exactly one, else `count` of them."""

    letter: DeadLetter | None
    count: int


def find_by_prefix(session: Session, id_or_prefix: str, owner: str | None = None) -> PrefixMatch:
    """The dead letter whose id is, or starts with, `id_or_prefix` (at least
    MIN_PREFIX_CHARS characters for a prefix, so a slip of the finger never picks one)."""
    exact = get(session, id_or_prefix, owner)
    if exact is not None:
        return PrefixMatch(exact, 1)
    if len(id_or_prefix) < MIN_PREFIX_CHARS:
        return PrefixMatch(None, 0)
    # Not LIKE: SQLite's ignores case, and `%` or `_` in the input would be wildcards.
    where = [func.substr(DeadLetter.id, 1, len(id_or_prefix)) == id_or_prefix]
    if owner is not None:
        where.append(DeadLetter.owner == owner)
    first_two = list(session.scalars(select(DeadLetter).where(*where).limit(2)))
    if len(first_two) < 2:
        return PrefixMatch(first_two[0] if first_two else None, len(first_two))
    count = session.scalar(select(func.count()).select_from(DeadLetter).where(*where))
    return PrefixMatch(None, int(count or 0))


def list_letters(
    session: Session,
    *,
    owner: str | None = None,
    task_name: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> list[DeadLetter]:
    query = select(DeadLetter)
    if owner is not None:
        query = query.where(DeadLetter.owner == owner)
    if task_name:
        query = query.where(DeadLetter.task_name == task_name)
    query = query.order_by(DeadLetter.failed_at.desc(), DeadLetter.id.desc())
    return list(session.scalars(query.limit(limit).offset(offset)))


def delete_letter(session: Session, letter: DeadLetter) -> None:
    session.delete(letter)
    session.flush()
