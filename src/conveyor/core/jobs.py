"""Submitting, cancelling and replaying jobs: the ledger row first, then the message.

The row is committed before the message is published, so a worker never runs a job the
ledger does not know, and a job the API answered 202 for is always visible.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from celery import Celery
from celery.canvas import Signature, _chain, chord, group
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from conveyor.core import ledger, outcomes, unique, workloads
from conveyor.core.celery_app import get_celery, queue_for
from conveyor.core.db import autocommit, get_engine, session_scope
from conveyor.core.events import publish_job
from conveyor.core.models import DeadLetter, Job, JobState, utcnow
from conveyor.core.redis_client import cancel_key, get_redis
from conveyor.core.settings import get_settings

# Headers Conveyor adds to the messages it publishes.
HEADER_RECORDED = "conveyor_recorded"
# The job's owner, so a task can key a rate limit or lock by it without reading the ledger.
HEADER_OWNER = "conveyor_owner"
# A cancel flag outlives any job that could still be running (the longest visibility window).
CANCEL_FLAG_SECONDS = 7 * 24 * 3600
MAX_TAG_LENGTH = 100


@dataclass
class Submission:
    task_name: str
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    owner: str | None = None
    queue: str | None = None
    countdown: float | None = None
    replay_of: str | None = None
    job_id: str | None = None
    # A unique job: while one with this key is queued or running, submit returns that one.
    # Defaults to the task class's `unique_key` / `unique_for` (see conveyor.core.unique).
    unique_key: str | None = None
    unique_for: float | None = None
    # Labels to search the job by in the dashboard and `GET /api/v1/jobs?tag=`.
    tags: list[str] = field(default_factory=list)


def submit(submission: Submission, *, app: Celery | None = None) -> Job:
    """Record the job, then publish it. Returns the ledger row.

    With a `job_id` that is already recorded (a deterministic id submitted again), the
    existing job is returned and nothing is published.
    """
    app = app or get_celery()
    prepared = _prepare(submission, app)
    if isinstance(prepared, Job):
        return prepared
    new = prepared.new
    try:
        # One INSERT commits by itself; with tags, the job and its tags in one transaction.
        with autocommit() if not new.tags else get_engine().begin() as connection:
            job = ledger.insert_job(connection, new)
    except IntegrityError:
        # Two submits of the same id at once: the primary key let one in; answer with it.
        if submission.job_id is None:
            raise
        with session_scope() as session:
            existing = session.get(Job, new.id)
        if existing is None:
            raise
        return existing
    _publish(app, prepared)
    return job


def submit_many(submissions: Sequence[Submission], *, app: Celery | None = None) -> list[Job]:
    """Submit many jobs at once: every row in one transaction (one multi-row INSERT), then
    every message over one broker connection. Returns the ledger rows in the same order.

    Each submission is checked as `submit` checks it first, so a bad one refuses the whole
    batch before anything is recorded. A deterministic `job_id` already recorded, or a unique
    key already held, answers with the existing job, as `submit` does. If the broker refuses
    a message part-way, that job and those after it are marked failed, and the error raised.
    """
    app = app or get_celery()
    answers: list[Job | None] = [None] * len(submissions)
    batch: list[tuple[int, _Prepared]] = []
    try:
        for index, submission in enumerate(submissions):
            prepared = _prepare(submission, app)
            if isinstance(prepared, Job):
                answers[index] = prepared
            else:
                batch.append((index, prepared))
        if batch:
            with get_engine().begin() as connection:
                jobs = ledger.insert_jobs(connection, [prepared.new for _, prepared in batch])
    except BaseException:
        for _, prepared in batch:
            if prepared.claim is not None:
                unique.release_job(prepared.new.id)
        raise
    if batch:
        with app.producer_or_acquire() as producer:
            for position, ((index, prepared), job) in enumerate(zip(batch, jobs, strict=True)):
                try:
                    _publish(app, prepared, producer=producer)
                except Exception as exc:
                    _not_published([later for _, later in batch[position + 1 :]], exc)
                    raise
                answers[index] = job
    return [job for job in answers if job is not None]


@dataclass
class _Prepared:
    """A submission checked and ready to record and publish."""

    new: ledger.NewJob
    headers: dict[str, str]
    claim: unique.UniqueSpec | None
    countdown: float | None


def _prepare(submission: Submission, app: Celery) -> _Prepared | Job:
    """Check a submission; the job already answering for it (its id recorded, or its unique
    key held), or what to record and publish."""
    _check_tags(submission.tags)
    job_id = submission.job_id or str(uuid.uuid4())
    queue = submission.queue or queue_for(submission.task_name, app)
    # Before the ledger row: a job for a queue no worker consumes would wait for ever.
    workloads.require_queue(queue, submission.task_name, get_settings())
    if submission.job_id is not None:
        with session_scope() as session:
            existing = session.get(Job, job_id)
        if existing is not None:
            return existing
    headers = {HEADER_RECORDED: "1"}
    if submission.owner:
        headers[HEADER_OWNER] = submission.owner
    claim = unique.spec_for(
        submission.task_name,
        submission.args,
        submission.kwargs,
        owner=submission.owner,
        unique_key=submission.unique_key,
        unique_for=submission.unique_for,
        app=app,
    )
    if claim is not None:
        # A claim whose row never gets committed is replaced by the next submit (unique.py).
        holder = unique.claim_or_existing(claim, job_id)
        if holder is not None:
            return holder
        headers[unique.HEADER] = "1"
    new = ledger.NewJob(
        id=job_id,
        name=submission.task_name,
        queue=queue,
        owner=submission.owner,
        args=submission.args,
        kwargs=submission.kwargs,
        replay_of=submission.replay_of,
        republishable=True,
        tags=tuple(submission.tags),
    )
    return _Prepared(new, headers, claim, submission.countdown)


def _publish(app: Celery, prepared: _Prepared, *, producer: Any = None) -> None:
    new = prepared.new
    try:
        app.send_task(
            new.name,
            args=list(new.args),
            kwargs=dict(new.kwargs or {}),
            # Shown in task events and Flower: written masked by the before_task_publish hook
            # (redaction.mask_shown_arguments); given here so Celery skips its own repr.
            argsrepr="",
            kwargsrepr="",
            task_id=new.id,
            queue=new.queue,
            countdown=prepared.countdown,
            headers=prepared.headers,
            producer=producer,
            # The ledger keeps the result: no copy in the result backend, and no SUBSCRIBE
            # to its channel per submit (ConveyorTask.on_success stores one only when the
            # ledger could not take it, for the reconciler).
            ignore_result=True,
        )
    except Exception as exc:
        _not_published([prepared], exc)
        raise


def _not_published(refused: list[_Prepared], exc: Exception) -> None:
    """The broker refused them: the ledger must not show jobs that will never run."""
    with session_scope() as session:
        for prepared in refused:
            ledger.mark_failed(session, prepared.new.id, exc, None, state=JobState.FAILED)
    for prepared in refused:
        if prepared.claim is not None:
            unique.release_job(prepared.new.id)


def _check_tags(tags: list[str]) -> None:
    for tag in tags:
        if not isinstance(tag, str) or not 1 <= len(tag) <= MAX_TAG_LENGTH:
            raise ValueError(f"tags: each tag is a string of 1 to {MAX_TAG_LENGTH} characters")


async def submit_async(submission: Submission, *, app: Celery | None = None) -> Job:
    """`submit` for async code (an `async def` route): the database write and the publish run
    in a thread, so the event loop goes on serving other requests meanwhile."""
    return await asyncio.to_thread(submit, submission, app=app)


async def submit_many_async(
    submissions: Sequence[Submission], *, app: Celery | None = None
) -> list[Job]:
    """`submit_many` for async code, in a thread like `submit_async`."""
    return await asyncio.to_thread(submit_many, submissions, app=app)


def cancel(session: Session, job: Job, *, app: Celery | None = None) -> bool:
    """Cancel a queued or running job. Running tasks stop at their next progress report
    (looked at most once per CONVEYOR_PROGRESS_INTERVAL, task.py)."""
    if not ledger.mark_cancelled(session, job.id):
        return False
    session.commit()
    get_redis().set(cancel_key(job.id), "1", ex=CANCEL_FLAG_SECONDS)
    unique.release_job(job.id)  # a cancelled job no longer blocks its unique key
    # Workers drop a revoked message they have not started; the ledger check covers restarts.
    (app or get_celery()).control.revoke(job.id)
    session.refresh(job)
    snapshot = ledger.job_to_dict(job)
    publish_job(snapshot)
    outcomes.emit({**snapshot, "owner": job.owner})
    return True


def replay(session: Session, letter: DeadLetter, *, app: Celery | None = None) -> Job:
    """Enqueue the dead letter's task again as a new job, linked to the old one."""
    job = submit(
        Submission(
            task_name=letter.task_name,
            args=list(letter.args),
            kwargs=dict(letter.kwargs),
            owner=letter.owner,
            queue=letter.queue,
            replay_of=letter.job_id,
        ),
        app=app,
    )
    letter.replayed_job_id = job.id
    letter.replayed_at = utcnow()
    session.flush()
    return job


# --- workflows -------------------------------------------------------------------------


def _flatten(canvas: Signature, stage: int) -> tuple[list[tuple[Signature, int]], int]:
    """Every task in a canvas with its stage; returns the next free stage.

    A chain advances the stage per step, a group keeps its members on one stage, and a
    chord's body comes after its header.
    """
    if isinstance(canvas, chord):
        header, after = _flatten(group(canvas.tasks), stage)
        body, after = _flatten(canvas.body, after)
        return header + body, after
    if isinstance(canvas, _chain):
        out: list[tuple[Signature, int]] = []
        for step in canvas.tasks:
            found, stage = _flatten(step, stage)
            out.extend(found)
        return out, stage
    if isinstance(canvas, group):
        out = []
        end = stage
        for member in canvas.tasks:
            found, after = _flatten(member, stage)
            out.extend(found)
            end = max(end, after)
        return out, end
    return [(canvas, stage)], stage + 1


def workflow_kind(canvas: Signature) -> str:
    if isinstance(canvas, chord):
        return "chord"
    if isinstance(canvas, _chain):
        return "chain"
    if isinstance(canvas, group):
        return "group"
    return "task"


def submit_workflow(canvas: Signature, *, owner: str | None = None, name: str | None = None) -> Job:
    """Run a chain, group or chord with a parent job whose progress follows its children."""
    parent_id = str(uuid.uuid4())
    canvas.freeze()
    steps, _ = _flatten(canvas, 0)
    with session_scope() as session:
        parent = ledger.create_job(
            session,
            ledger.NewJob(
                id=parent_id,
                name=name or f"workflow.{workflow_kind(canvas)}",
                queue="-",
                owner=owner,
            ),
        )
        parent.progress_total = len(steps)
        for signature, stage in steps:
            signature_id = str(signature.options.get("task_id") or signature.id)
            task_name = str(signature.task)
            ledger.create_job(
                session,
                ledger.NewJob(
                    id=signature_id,
                    name=task_name,
                    queue=signature.options.get("queue") or queue_for(task_name),
                    owner=owner,
                    args=list(signature.args),
                    kwargs=dict(signature.kwargs),
                    parent_id=parent_id,
                    root_id=parent_id,
                    workflow_stage=stage,
                ),
            )
    canvas.apply_async(headers={HEADER_RECORDED: "1"})
    return parent
