"""Replaying every dead letter that matches a filter, as a job that reports its progress."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from celery import shared_task
from sqlalchemy import select

from conveyor.core import jobs
from conveyor.core.db import session_scope
from conveyor.core.errors import PermanentError
from conveyor.core.models import DeadLetter
from conveyor.core.search import DeadLetterFilter
from conveyor.core.task import ConveyorTask

TASK_NAME = "conveyor.dead_letters.replay_matching"
BATCH = 100


def submit_replay(where: DeadLetterFilter, expected: int, owner: str | None) -> str:
    """The job that replays the letters matching `where`, at most `expected` of them (the
    count the operator confirmed). Returns its id."""
    job = jobs.submit(
        jobs.Submission(
            task_name=TASK_NAME,
            kwargs={"filters": where.to_json(), "expected": expected},
            owner=owner,
        )
    )
    return job.id


@shared_task(bind=True, base=ConveyorTask, name=TASK_NAME)
def replay_matching(self: ConveyorTask, filters: dict[str, Any], expected: int) -> dict[str, int]:
    try:
        where = DeadLetterFilter.from_json(filters)
    except (TypeError, ValueError) as exc:
        raise PermanentError(f"filters: {exc}") from None
    # Letters already replayed drop out, so a redelivered job goes on where it stopped.
    where = replace(where, replayed="no")
    replayed = 0
    self.report_progress(0, expected, f"0 of {expected} replayed")
    while replayed < expected:
        with session_scope() as session:
            batch = list(
                session.scalars(
                    select(DeadLetter)
                    .where(*where.conditions())
                    .order_by(DeadLetter.failed_at, DeadLetter.id)
                    .limit(min(BATCH, expected - replayed))
                )
            )
            if not batch:
                break
            for letter in batch:
                jobs.replay(session, letter)
                # One letter at a time: a crash replays at most the one in hand again.
                session.commit()
                replayed += 1
        self.report_progress(replayed, expected, f"{replayed} of {expected} replayed")
    return {"replayed": replayed, "expected": expected}
