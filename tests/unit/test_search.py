"""Finding jobs and dead letters: each filter, paging, tags, failed attempts, bulk counts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session

from conveyor.core import ledger
from conveyor.core.models import DeadLetter, Job, JobState, JobTag
from conveyor.core.search import (
    DeadLetterFilter,
    JobFilter,
    attempts,
    children,
    count_dead_letters,
    search_dead_letters,
    search_jobs,
    tags,
)

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def _job(session: Session, job_id: str, **fields: object) -> Job:
    tag_list = tuple(fields.pop("tags", ()))  # type: ignore[arg-type]
    created = fields.pop("created_at", None)
    job = ledger.create_job(
        session,
        ledger.NewJob(
            id=job_id,
            name=str(fields.pop("name", "app.tasks.send")),
            queue=str(fields.pop("queue", "default")),
            owner=fields.pop("owner", "alice"),  # type: ignore[arg-type]
            tags=tag_list,
        ),
    )
    for key, value in fields.items():
        setattr(job, key, value)
    session.flush()
    if created is not None:
        job.created_at = created  # type: ignore[assignment]
        # A tag row is stamped with its job's time: the tag's index orders the page.
        session.execute(update(JobTag).where(JobTag.job_id == job_id).values(created_at=created))
        session.flush()
    return job


def _ids(rows: list[Job]) -> list[str]:
    return [row.id for row in rows]


def test_each_job_filter_narrows_the_list_newest_first(session: Session) -> None:
    _job(session, "a", created_at=T0, state=JobState.SUCCEEDED, queue="email")
    _job(session, "b", created_at=T0 + timedelta(minutes=1), state=JobState.FAILED)
    _job(session, "c", created_at=T0 + timedelta(minutes=2), name="app.reports.build")
    _job(session, "d", created_at=T0 + timedelta(minutes=3), owner="bob", tags=("vip",))
    session.commit()

    assert _ids(search_jobs(session, JobFilter())[0]) == ["d", "c", "b", "a"]
    assert _ids(search_jobs(session, JobFilter(state="failed"))[0]) == ["b"]
    assert _ids(search_jobs(session, JobFilter(queue="email"))[0]) == ["a"]
    assert _ids(search_jobs(session, JobFilter(task="app.reports.build"))[0]) == ["c"]
    assert _ids(search_jobs(session, JobFilter(task="app.tasks.*"))[0]) == ["d", "b", "a"]
    assert _ids(search_jobs(session, JobFilter(owner="bob"))[0]) == ["d"]
    assert _ids(search_jobs(session, JobFilter(tag="vip"))[0]) == ["d"]
    window = JobFilter(created_from=T0 + timedelta(minutes=1), created_to=T0 + timedelta(minutes=3))
    assert _ids(search_jobs(session, window)[0]) == ["c", "b"]


def test_a_task_prefix_treats_like_wildcards_literally(session: Session) -> None:
    _job(session, "x", name="app_x.run")
    _job(session, "y", name="appZx.run")
    session.commit()
    assert _ids(search_jobs(session, JobFilter(task="app_x.*"))[0]) == ["x"]


def test_pages_by_cursor_without_gaps_or_repeats_also_by_tag(session: Session) -> None:
    for index in range(7):
        _job(session, f"j{index}", created_at=T0 + timedelta(seconds=index), tags=("batch",))
    session.commit()
    for where in (JobFilter(), JobFilter(tag="batch")):
        seen: list[str] = []
        cursor = None
        while True:
            rows, cursor = search_jobs(session, where, limit=3, cursor=cursor)
            seen += _ids(rows)
            if cursor is None:
                break
        assert seen == [f"j{index}" for index in reversed(range(7))]


def test_tags_are_kept_once_each_and_listed(session: Session) -> None:
    _job(session, "t", tags=("b", "a", "b"))
    session.commit()
    assert tags(session, "t") == ["a", "b"]


def test_failed_attempts_are_kept_with_their_errors(session: Session) -> None:
    new = ledger.NewJob(id="r", name="app.tasks.send", queue="default")
    ledger.create_job(session, new)
    ledger.mark_started(session, new, worker_host="w1")
    ledger.mark_retrying(session, "r", RuntimeError("first"), "tb 1")
    ledger.mark_started(session, new, worker_host="w2")
    ledger.mark_failed(session, "r", ValueError("second"), "tb 2")
    session.commit()
    kept = attempts(session, "r")
    assert [(a.attempt, a.outcome, a.error_type, a.worker_host) for a in kept] == [
        (1, "retrying", "RuntimeError", "w1"),
        (2, "dead", "ValueError", "w2"),
    ]
    assert kept[1].error_traceback == "tb 2"


def test_children_are_listed_in_order(session: Session) -> None:
    _job(session, "p")
    _job(session, "s1", parent_id="p", created_at=T0)
    _job(session, "s2", parent_id="p", created_at=T0 + timedelta(seconds=1))
    session.commit()
    assert _ids(children(session, "p")) == ["s1", "s2"]


def _letter(session: Session, letter_id: str, **fields: object) -> DeadLetter:
    values: dict[str, object] = {
        "job_id": f"job-{letter_id}",
        "task_name": "app.tasks.send",
        "queue": "email",
        "owner": "alice",
        "error_type": "SMTPError",
        "error_message": "mailbox unavailable",
        "reason": "retries_exhausted",
        "attempts": 3,
        "failed_at": T0,
    }
    values.update(fields)
    letter = DeadLetter(id=letter_id, **values)
    session.add(letter)
    return letter


def test_dead_letter_filters_and_count(session: Session) -> None:
    _letter(session, "l1")
    _letter(session, "l2", error_type="Timeout", failed_at=T0 + timedelta(minutes=1))
    _letter(session, "l3", queue="images", error_message="100% of 50_000 pixels")
    _letter(session, "l4", replayed_job_id="new", failed_at=T0 + timedelta(minutes=2))
    _letter(session, "l5", reason="permanent_error", owner="bob")
    session.commit()

    def found(where: DeadLetterFilter) -> set[str]:
        return {letter.id for letter in search_dead_letters(session, where)[0]}

    assert found(DeadLetterFilter(error_type="Timeout")) == {"l2"}
    assert found(DeadLetterFilter(queue="images")) == {"l3"}
    assert found(DeadLetterFilter(text="100%")) == {"l3"}
    assert found(DeadLetterFilter(text="50_0")) == {"l3"}
    assert found(DeadLetterFilter(replayed="yes")) == {"l4"}
    assert "l4" not in found(DeadLetterFilter(replayed="no"))
    assert found(DeadLetterFilter(reason="permanent_error", owner="bob")) == {"l5"}
    assert found(DeadLetterFilter(failed_before=T0 + timedelta(seconds=30))) == {"l1", "l3", "l5"}
    assert count_dead_letters(session, DeadLetterFilter(queue="email")) == 4


def test_a_dead_letter_filter_survives_a_trip_through_json() -> None:
    where = DeadLetterFilter(task="app.*", failed_before=T0, replayed="no")
    assert DeadLetterFilter.from_json(where.to_json()) == where
    with pytest.raises(ValueError, match="unknown dead-letter filters: colour"):
        DeadLetterFilter.from_json({"colour": "red"})
