"""Finding jobs and dead letters by what an operator knows: state, task, queue, owner, tag,
error and time. Newest first, paged by a cursor, each filter served by an index."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from datetime import datetime
from typing import Any

from sqlalchemy import Select, and_, func, or_, select
from sqlalchemy.orm import Session

from conveyor.core.ledger import decode_cursor, encode_cursor, encode_position
from conveyor.core.models import DeadLetter, Job, JobAttempt, JobTag

MAX_COUNT = 100_000


def _name_matches(column: Any, pattern: str) -> Any:
    """`name` exactly, or every name starting with it when it ends in `*`."""
    if pattern.endswith("*"):
        prefix = pattern[:-1].replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        return column.like(prefix + "%", escape="\\")
    return column == pattern


@dataclass(frozen=True)
class JobFilter:
    state: str | None = None
    queue: str | None = None
    task: str | None = None
    owner: str | None = None
    tag: str | None = None
    created_from: datetime | None = None
    created_to: datetime | None = None

    def query(self) -> Select[Any]:
        query = select(Job)
        created = Job.created_at
        if self.tag:
            # The tag's own index orders the page; the job row comes by its key.
            query = query.join(JobTag, JobTag.job_id == Job.id).where(JobTag.tag == self.tag)
            created = JobTag.created_at
        if self.state:
            query = query.where(Job.state == self.state)
        if self.queue:
            query = query.where(Job.queue == self.queue)
        if self.task:
            query = query.where(_name_matches(Job.name, self.task))
        if self.owner:
            query = query.where(Job.owner == self.owner)
        if self.created_from:
            query = query.where(created >= self.created_from)
        if self.created_to:
            query = query.where(created < self.created_to)
        return query.order_by(created.desc(), Job.id.desc())

    def active(self) -> dict[str, str]:
        """The filters set, as query-string values."""
        shown = {}
        for name, value in asdict(self).items():
            if value:
                shown[name] = value.isoformat() if isinstance(value, datetime) else str(value)
        return shown


def search_jobs(
    session: Session, where: JobFilter, *, limit: int = 50, cursor: str | None = None
) -> tuple[list[Job], str | None]:
    query = where.query()
    if cursor:
        stamp, last_id = decode_cursor(cursor)
        created = JobTag.created_at if where.tag else Job.created_at
        query = query.where(or_(created < stamp, and_(created == stamp, Job.id < last_id)))
    rows: list[Job] = list(session.scalars(query.limit(limit + 1)))
    next_cursor = encode_cursor(rows[limit - 1]) if len(rows) > limit else None
    return rows[:limit], next_cursor


def attempts(session: Session, job_id: str) -> list[JobAttempt]:
    """A job's failed attempts, first to last."""
    query = select(JobAttempt).where(JobAttempt.job_id == job_id).order_by(JobAttempt.attempt)
    return list(session.scalars(query))


def tags(session: Session, job_id: str) -> list[str]:
    query = select(JobTag.tag).where(JobTag.job_id == job_id).order_by(JobTag.tag)
    return list(session.scalars(query))


def children(session: Session, job_id: str, *, limit: int = 100) -> list[Job]:
    """The steps of a workflow, in the order they were made."""
    query = select(Job).where(Job.parent_id == job_id).order_by(Job.created_at, Job.id)
    return list(session.scalars(query.limit(limit)))


@dataclass(frozen=True)
class DeadLetterFilter:
    task: str | None = None
    queue: str | None = None
    error_type: str | None = None
    reason: str | None = None
    owner: str | None = None
    # "yes": only replayed ones, "no": only those never replayed.
    replayed: str | None = None
    failed_from: datetime | None = None
    # Exclusive; a bulk replay fixes it when it is confirmed, so later letters are left out.
    failed_before: datetime | None = None
    text: str | None = None

    def conditions(self) -> list[Any]:
        where: list[Any] = []
        if self.task:
            where.append(_name_matches(DeadLetter.task_name, self.task))
        if self.queue:
            where.append(DeadLetter.queue == self.queue)
        if self.error_type:
            where.append(_name_matches(DeadLetter.error_type, self.error_type))
        if self.reason:
            where.append(DeadLetter.reason == self.reason)
        if self.owner:
            where.append(DeadLetter.owner == self.owner)
        if self.replayed == "yes":
            where.append(DeadLetter.replayed_job_id.is_not(None))
        elif self.replayed == "no":
            where.append(DeadLetter.replayed_job_id.is_(None))
        if self.failed_from:
            where.append(DeadLetter.failed_at >= self.failed_from)
        if self.failed_before:
            where.append(DeadLetter.failed_at < self.failed_before)
        if self.text:
            escaped = self.text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            where.append(DeadLetter.error_message.ilike(f"%{escaped}%", escape="\\"))
        return where

    def to_json(self) -> dict[str, Any]:
        """For a task's kwargs: JSON only."""
        values: dict[str, Any] = {}
        for item in fields(self):
            value = getattr(self, item.name)
            if value is not None and value != "":
                values[item.name] = value.isoformat() if isinstance(value, datetime) else value
        return values

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> DeadLetterFilter:
        known = {item.name for item in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown dead-letter filters: {', '.join(sorted(unknown))}")
        parsed = dict(values)
        for name in ("failed_from", "failed_before"):
            if parsed.get(name):
                parsed[name] = datetime.fromisoformat(parsed[name])
        return cls(**parsed)


def search_dead_letters(
    session: Session, where: DeadLetterFilter, *, limit: int = 50, cursor: str | None = None
) -> tuple[list[DeadLetter], str | None]:
    query = select(DeadLetter).where(*where.conditions())
    if cursor:
        stamp, last_id = decode_cursor(cursor)
        query = query.where(
            or_(
                DeadLetter.failed_at < stamp,
                and_(DeadLetter.failed_at == stamp, DeadLetter.id < last_id),
            )
        )
    query = query.order_by(DeadLetter.failed_at.desc(), DeadLetter.id.desc()).limit(limit + 1)
    rows = list(session.scalars(query))
    next_cursor = None
    if len(rows) > limit:
        next_cursor = encode_position(rows[limit - 1].failed_at, rows[limit - 1].id)
    return rows[:limit], next_cursor


def count_dead_letters(session: Session, where: DeadLetterFilter) -> int:
    """How many match, counted up to MAX_COUNT (a bulk action's confirmation shows it)."""
    matching = select(DeadLetter.id).where(*where.conditions()).limit(MAX_COUNT + 1).subquery()
    return int(session.scalar(select(func.count()).select_from(matching)) or 0)
