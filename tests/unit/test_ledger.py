"""The job ledger on SQLite: conditional transitions, results, pages and workflows."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from conveyor.core import ledger
from conveyor.core.ledger import BadCursor, NewJob
from conveyor.core.models import Job, JobState
from conveyor.core.redaction import REDACTED


def reload(session: Session, job_id: str) -> Job:
    """The row as stored: transitions bypass the identity map, so expire it first."""
    session.expire_all()
    job = session.get(Job, job_id)
    assert job is not None
    return job


def new_job(job_id: str = "job-1", **extra: object) -> NewJob:
    return NewJob(id=job_id, name="conveyor.workloads.email.send", queue="email", **extra)  # type: ignore[arg-type]


def make_job(session: Session, job_id: str = "job-1", **extra: object) -> Job:
    job = ledger.create_job(session, new_job(job_id, **extra))
    session.commit()
    return job


def boom(message: str = "smtp down") -> ConnectionError:
    return ConnectionError(message)


# --- creating ----------------------------------------------------------------------------


def test_create_job_records_a_queued_job(session: Session) -> None:
    make_job(session, owner="alice")
    job = reload(session, "job-1")
    assert job.state == JobState.QUEUED
    assert job.attempts == 0
    assert job.owner == "alice"
    assert job.progress_current == 0
    assert job.finished_at is None


def test_secrets_in_args_are_redacted_before_they_are_stored(
    session: Session, engine: Engine
) -> None:
    make_job(
        session,
        args=({"api_key": "sk_live_123", "to": "a@example.com"}, "4111 1111 1111 1111"),
        kwargs={"password": "hunter2", "subject": "hello"},
    )
    with Session(engine) as fresh:
        job = fresh.get(Job, "job-1")
        assert job is not None
        assert job.args == [{"api_key": REDACTED, "to": "a@example.com"}, REDACTED]
        assert job.kwargs == {"password": REDACTED, "subject": "hello"}


def test_root_id_defaults_to_the_parent(session: Session) -> None:
    make_job(session, "child", parent_id="parent")
    assert reload(session, "child").root_id == "parent"


def test_ensure_job_inserts_once(session: Session) -> None:
    assert ledger.ensure_job(session, new_job()) is True
    assert ledger.ensure_job(session, new_job()) is False
    session.commit()
    assert session.query(Job).count() == 1


def test_get_job_hides_other_owners_jobs(session: Session) -> None:
    make_job(session, owner="alice")
    assert ledger.get_job(session, "job-1", owner="alice") is not None
    assert ledger.get_job(session, "job-1", owner="bob") is None
    assert ledger.get_job(session, "job-1") is not None
    assert ledger.get_job(session, "missing") is None


# --- transitions -------------------------------------------------------------------------


def test_mark_started_counts_attempts(session: Session) -> None:
    make_job(session)
    first = ledger.mark_started(session, new_job(), worker_host="w1")
    assert first is not None
    assert (first.state, first.attempts, first.worker_host) == (JobState.STARTED, 1, "w1")
    assert first.started_at is not None
    assert ledger.mark_retrying(session, "job-1", boom(), "Traceback ...") is not None
    second = ledger.mark_started(session, new_job(), worker_host="w2")
    assert second is not None
    assert (second.attempts, second.worker_host) == (2, "w2")


def test_mark_started_records_a_job_the_ledger_never_saw(session: Session) -> None:
    job = ledger.mark_started(session, new_job("external"), worker_host="w1")
    assert job is not None
    assert (job.id, job.state, job.attempts) == ("external", JobState.STARTED, 1)


def test_a_cancelled_job_does_not_start(session: Session) -> None:
    make_job(session)
    assert ledger.mark_cancelled(session, "job-1") is not None
    assert ledger.mark_started(session, new_job(), worker_host="w1") is None
    job = reload(session, "job-1")
    assert job.state == JobState.CANCELLED
    assert job.attempts == 0
    assert job.started_at is None
    assert job.finished_at is not None


def test_a_succeeded_job_never_moves_again(session: Session) -> None:
    make_job(session)
    ledger.mark_started(session, new_job(), worker_host="w1")
    assert ledger.mark_succeeded(session, "job-1", {"sent": True}) is not None
    finished = reload(session, "job-1").finished_at

    assert ledger.mark_started(session, new_job(), worker_host="w2") is None
    assert ledger.mark_retrying(session, "job-1", boom(), None) is None
    assert ledger.mark_cancelled(session, "job-1") is None
    assert ledger.mark_failed(session, "job-1", boom(), None) is None
    assert ledger.mark_succeeded(session, "job-1", {"sent": "twice"}) is None
    assert ledger.mark_progress(session, "job-1", 5, 10, "late") is None

    job = reload(session, "job-1")
    assert job.state == JobState.SUCCEEDED
    assert job.attempts == 1
    assert job.worker_host == "w1"
    assert job.result == {"sent": True}
    assert job.error_type is None
    assert job.finished_at == finished


@pytest.mark.parametrize("final", [JobState.DEAD, JobState.FAILED, JobState.CANCELLED])
def test_other_terminal_states_are_final_too(session: Session, final: JobState) -> None:
    make_job(session)
    if final is JobState.CANCELLED:
        assert ledger.mark_cancelled(session, "job-1") is not None
    else:
        assert ledger.mark_failed(session, "job-1", boom(), None, state=final) is not None
    assert ledger.mark_succeeded(session, "job-1", 1) is None
    assert ledger.mark_started(session, new_job(), worker_host="w") is None
    assert ledger.mark_retrying(session, "job-1", boom(), None) is None
    assert reload(session, "job-1").state == final


def test_mark_succeeded_clears_errors_of_earlier_attempts(session: Session) -> None:
    make_job(session)
    ledger.mark_started(session, new_job(), worker_host="w1")
    assert ledger.mark_retrying(session, "job-1", boom("first try"), "Traceback: boom") is not None
    retrying = reload(session, "job-1")
    assert retrying.state == JobState.RETRYING
    assert (retrying.error_type, retrying.error_message) == ("ConnectionError", "first try")
    assert retrying.error_traceback == "Traceback: boom"

    ledger.mark_started(session, new_job(), worker_host="w1")
    assert ledger.mark_succeeded(session, "job-1", "ok") is not None
    job = reload(session, "job-1")
    assert job.state == JobState.SUCCEEDED
    assert (job.error_type, job.error_message, job.error_traceback) == (None, None, None)
    assert job.result == "ok"
    assert job.finished_at is not None
    assert ledger.job_to_dict(job)["error"] is None


def test_mark_failed_records_the_error(session: Session) -> None:
    make_job(session)
    ledger.mark_started(session, new_job(), worker_host="w1")
    traceback = "T" * 10 + "x" * ledger.MAX_TRACEBACK_CHARS
    assert ledger.mark_failed(session, "job-1", ValueError("m" * 9000), traceback) is not None
    job = reload(session, "job-1")
    assert job.state == JobState.DEAD
    assert job.error_type == "ValueError"
    assert job.error_message == "m" * 5000
    # The end of a traceback is the part that names the failing line.
    assert job.error_traceback == "x" * ledger.MAX_TRACEBACK_CHARS
    assert job.finished_at is not None
    assert ledger.job_to_dict(job)["error"]["type"] == "ValueError"


def test_an_empty_error_message_falls_back_to_the_type(session: Session) -> None:
    make_job(session)
    ledger.mark_failed(session, "job-1", TimeoutError(), None, state=JobState.FAILED)
    job = reload(session, "job-1")
    assert (job.state, job.error_message) == (JobState.FAILED, "TimeoutError")


def test_progress_is_recorded_only_while_started(session: Session) -> None:
    make_job(session)
    assert ledger.mark_progress(session, "job-1", 1, 10, "too early") is None
    ledger.mark_started(session, new_job(), worker_host="w1")
    assert ledger.mark_progress(session, "job-1", 3, 10, "m" * 900) is not None
    job = reload(session, "job-1")
    assert (job.progress_current, job.progress_total) == (3, 10)
    assert job.progress_message == "m" * 500
    assert ledger.mark_progress(session, "job-1", 4, None, "") is not None
    job = reload(session, "job-1")
    assert (job.progress_current, job.progress_total, job.progress_message) == (4, None, None)


def test_transitions_on_a_missing_job_do_nothing(session: Session) -> None:
    assert ledger.mark_succeeded(session, "nope", 1) is None
    assert ledger.mark_cancelled(session, "nope") is None
    assert ledger.mark_retrying(session, "nope", boom(), None) is None


# --- results -----------------------------------------------------------------------------


def test_small_results_are_kept_as_json() -> None:
    assert ledger.summarize_result({"count": 3, "ids": (1, 2)}) == {"count": 3, "ids": [1, 2]}
    assert ledger.summarize_result(None) is None


def test_results_are_redacted() -> None:
    assert ledger.summarize_result({"token": "abc", "ok": True}) == {"token": REDACTED, "ok": True}


def test_huge_results_are_truncated_to_a_preview() -> None:
    huge = {"rows": [f"row-{i:06d}" for i in range(10_000)]}
    summary = ledger.summarize_result(huge)
    assert summary["truncated"] is True
    assert summary["size"] == len(json.dumps(huge))
    assert summary["size"] > ledger.MAX_RESULT_BYTES
    assert len(summary["preview"]) == 2000
    assert summary["preview"].startswith('{"rows": ["row-000000"')
    assert len(json.dumps(summary)) < ledger.MAX_RESULT_BYTES


def test_a_huge_result_is_stored_truncated(session: Session) -> None:
    make_job(session)
    ledger.mark_started(session, new_job(), worker_host="w")
    ledger.mark_succeeded(session, "job-1", ["x" * 1000] * 100)
    assert reload(session, "job-1").result["truncated"] is True


# --- pages -------------------------------------------------------------------------------


def seed_jobs(session: Session) -> list[Job]:
    """28 jobs: 24 for alice, 4 for bob; groups of three share a created_at to test ties."""
    base = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    jobs = []
    for i in range(28):
        job = ledger.create_job(
            session,
            NewJob(
                id=f"job-{i:03d}",
                name="t",
                queue="default" if i % 2 else "email",
                owner="bob" if i % 6 == 5 else "alice",
            ),
        )
        job.created_at = base + timedelta(seconds=i // 3)
        jobs.append(job)
    session.commit()
    return jobs


def newest_first(jobs: list[Job]) -> list[str]:
    return [job.id for job in sorted(jobs, key=lambda j: (j.created_at, j.id), reverse=True)]


def all_pages(session: Session, *, limit: int, **filters: object) -> tuple[list[str], int]:
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        rows, cursor = ledger.list_jobs(session, limit=limit, cursor=cursor, **filters)  # type: ignore[arg-type]
        pages += 1
        assert len(rows) <= limit
        seen.extend(row.id for row in rows)
        if cursor is None:
            return seen, pages
        assert pages < 100, "pagination does not end"


@pytest.mark.parametrize("limit", [1, 4, 5, 7, 28, 50])
def test_pages_return_every_job_once_newest_first(session: Session, limit: int) -> None:
    jobs = seed_jobs(session)
    seen, pages = all_pages(session, limit=limit, owner=None)
    assert seen == newest_first(jobs)
    assert len(set(seen)) == 28
    assert pages == max(1, -(-28 // limit))


def test_pages_are_filtered_by_owner(session: Session) -> None:
    jobs = seed_jobs(session)
    alice, _ = all_pages(session, limit=4, owner="alice")
    bob, _ = all_pages(session, limit=4, owner="bob")
    assert alice == newest_first([j for j in jobs if j.owner == "alice"])
    assert bob == newest_first([j for j in jobs if j.owner == "bob"])
    assert len(alice) == 24
    assert len(bob) == 4
    assert all_pages(session, limit=4, owner="carol") == ([], 1)


def test_pages_are_filtered_by_queue_and_state(session: Session) -> None:
    jobs = seed_jobs(session)
    ledger.mark_cancelled(session, "job-004")
    ledger.mark_cancelled(session, "job-010")
    session.commit()
    email, _ = all_pages(session, limit=3, owner=None, queue="email")
    assert email == newest_first([j for j in jobs if j.queue == "email"])
    cancelled, _ = all_pages(session, limit=1, owner=None, state="cancelled")
    assert cancelled == ["job-010", "job-004"]


def test_new_jobs_do_not_shift_later_pages(session: Session) -> None:
    jobs = seed_jobs(session)
    first, cursor = ledger.list_jobs(session, owner=None, limit=10)
    ledger.create_job(session, NewJob(id="job-999", name="t", queue="default"))
    session.commit()
    rest, _ = all_pages_from(session, cursor)
    assert [j.id for j in first] + rest == newest_first(jobs)


def all_pages_from(session: Session, cursor: str | None) -> tuple[list[str], None]:
    seen: list[str] = []
    while cursor is not None:
        rows, cursor = ledger.list_jobs(session, owner=None, limit=10, cursor=cursor)
        seen.extend(row.id for row in rows)
    return seen, None


def test_cursor_round_trips(session: Session) -> None:
    job = make_job(session)
    stamp, job_id = ledger.decode_cursor(ledger.encode_cursor(job))
    assert job_id == "job-1"
    assert stamp == ledger.as_utc(job.created_at)


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize(
    "cursor",
    [
        "not a cursor!",
        "%%%",
        "é",
        "abc",
        b64(b"not json"),
        b64(b"\xff\xfe\xfd"),
        b64(b"[]"),
        b64(b'["2024-01-01T00:00:00+00:00"]'),
        b64(b'["2024-01-01T00:00:00+00:00", "a", "b"]'),
        b64(b'["yesterday", "job-1"]'),
        b64(b"[1, 2]"),
        b64(b"42"),
        b64(b"null"),
    ],
)
def test_garbage_cursors_raise_bad_cursor(session: Session, cursor: str) -> None:
    with pytest.raises(BadCursor):
        ledger.decode_cursor(cursor)
    with pytest.raises(BadCursor):
        ledger.list_jobs(session, owner=None, cursor=cursor)


def test_bad_cursor_is_a_value_error() -> None:
    assert issubclass(BadCursor, ValueError)


# --- workflows ---------------------------------------------------------------------------


def make_workflow(session: Session, stages: list[int], parent: str = "wf") -> list[str]:
    ledger.create_job(session, NewJob(id=parent, name="workflow.chain", queue="-"))
    ids = []
    for i, stage in enumerate(stages):
        child = f"{parent}-step-{i}"
        ledger.create_job(
            session,
            NewJob(id=child, name="t", queue="default", parent_id=parent, workflow_stage=stage),
        )
        ids.append(child)
    session.commit()
    return ids


def finish(session: Session, job_id: str, state: JobState) -> None:
    ledger.mark_started(session, NewJob(id=job_id, name="t", queue="default"), worker_host="w")
    if state is JobState.SUCCEEDED:
        assert ledger.mark_succeeded(session, job_id, None)
    else:
        assert ledger.mark_failed(session, job_id, boom(), None, state=state)


def test_refresh_parent_of_a_missing_job_is_none(session: Session) -> None:
    assert ledger.refresh_parent(session, "missing") is None


def test_a_workflow_with_nothing_started_stays_queued(session: Session) -> None:
    make_workflow(session, [0, 1, 2])
    parent = ledger.refresh_parent(session, "wf")
    assert parent is not None
    assert parent.state == JobState.QUEUED
    assert (parent.progress_current, parent.progress_total) == (0, 3)
    assert parent.started_at is None


def test_a_workflow_is_started_once_a_child_starts(session: Session) -> None:
    ids = make_workflow(session, [0, 1, 2])
    ledger.mark_started(session, NewJob(id=ids[0], name="t", queue="default"), worker_host="w")
    parent = ledger.refresh_parent(session, "wf")
    assert parent is not None
    assert parent.state == JobState.STARTED
    assert parent.started_at is not None
    assert parent.progress_current == 0


def test_workflow_progress_follows_children_until_all_succeed(session: Session) -> None:
    ids = make_workflow(session, [0, 1, 2])
    for done, child in enumerate(ids, start=1):
        finish(session, child, JobState.SUCCEEDED)
        parent = ledger.refresh_parent(session, "wf")
        assert parent is not None
        assert (parent.progress_current, parent.progress_total) == (done, 3)
        assert parent.progress_message == f"{done} of 3 steps finished"
        if done < 3:
            assert parent.state == JobState.STARTED
            assert parent.finished_at is None
    assert parent.state == JobState.SUCCEEDED
    assert parent.finished_at is not None


def test_a_dead_child_fails_the_workflow_once_the_rest_finish(session: Session) -> None:
    ids = make_workflow(session, [0, 0, 1])
    finish(session, ids[0], JobState.DEAD)
    parent = ledger.refresh_parent(session, "wf")
    assert parent is not None
    assert parent.state == JobState.STARTED
    finish(session, ids[1], JobState.SUCCEEDED)
    assert ledger.cancel_later_stages(session, "wf", after_stage=0) == 1
    parent = ledger.refresh_parent(session, "wf")
    assert parent is not None
    assert parent.state == JobState.FAILED
    assert (parent.progress_current, parent.progress_total) == (3, 3)
    assert parent.finished_at is not None


def test_a_cancelled_child_cancels_an_otherwise_successful_workflow(session: Session) -> None:
    ids = make_workflow(session, [0, 1])
    finish(session, ids[0], JobState.SUCCEEDED)
    ledger.mark_cancelled(session, ids[1])
    parent = ledger.refresh_parent(session, "wf")
    assert parent is not None
    assert parent.state == JobState.CANCELLED


def test_a_finished_workflow_is_not_rewritten(session: Session) -> None:
    ids = make_workflow(session, [0, 1])
    for child in ids:
        finish(session, child, JobState.SUCCEEDED)
    assert ledger.refresh_parent(session, "wf").state == JobState.SUCCEEDED  # type: ignore[union-attr]
    # A late child (say, a replay attached to the workflow) must not reopen it.
    ledger.create_job(
        session, NewJob(id="late", name="t", queue="default", parent_id="wf", workflow_stage=2)
    )
    parent = ledger.refresh_parent(session, "wf")
    assert parent is not None
    assert reload(session, "wf").state == JobState.SUCCEEDED
    assert reload(session, "wf").progress_total == 2


def test_cancel_later_stages_cancels_only_queued_later_steps(session: Session) -> None:
    ids = make_workflow(session, [0, 1, 1, 2, 2, 3])
    make_workflow(session, [5], parent="other")
    finish(session, ids[0], JobState.DEAD)
    ledger.mark_started(session, NewJob(id=ids[3], name="t", queue="default"), worker_host="w")
    finish(session, ids[5], JobState.SUCCEEDED)

    assert ledger.cancel_later_stages(session, "wf", after_stage=1) == 1
    assert [reload(session, child).state for child in ids] == [
        JobState.DEAD,
        JobState.QUEUED,  # stage 1: not after stage 1
        JobState.QUEUED,
        JobState.STARTED,  # running: not ours to cancel
        JobState.CANCELLED,
        JobState.SUCCEEDED,
    ]
    assert reload(session, "other-step-0").state == JobState.QUEUED
    assert reload(session, ids[4]).finished_at is not None

    assert ledger.cancel_later_stages(session, "wf", after_stage=0) == 2
    assert reload(session, ids[1]).state == JobState.CANCELLED
    assert reload(session, ids[2]).state == JobState.CANCELLED
    assert ledger.cancel_later_stages(session, "wf", after_stage=0) == 0


def test_count_by_state(session: Session) -> None:
    make_job(session, "a")
    make_job(session, "b")
    make_job(session, "c")
    ledger.mark_cancelled(session, "c")
    assert ledger.count_by_state(session) == {"queued": 2, "cancelled": 1}


def test_a_failed_statement_does_not_carry_the_job_arguments(engine: Engine) -> None:
    """Database errors are logged and shown in tracebacks: they name the statement, never
    its values, which hold the real arguments kept for republishing (secrets included)."""
    from sqlalchemy.exc import IntegrityError

    secret = NewJob(
        id="dup", name="t", queue="q", kwargs={"api_token": "tok-live-123"}, republishable=True
    )
    with engine.begin() as connection:
        ledger.insert_job(connection, secret)
    with pytest.raises(IntegrityError) as failed, engine.begin() as connection:
        ledger.insert_job(connection, secret)
    assert "conveyor_jobs" in str(failed.value)
    assert "tok-live-123" not in str(failed.value)
