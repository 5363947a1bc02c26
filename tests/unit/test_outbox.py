"""The outbox: a job's ending flags its outcome events in the same statement; telling them
claims the flag in the listeners' transaction, so each outcome is told exactly once."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from conveyor.core import db, ledger, outcomes
from conveyor.core.db import retry_on_disconnect, session_scope
from conveyor.core.ledger import NewJob
from conveyor.core.models import Base, Job, JobState, utcnow
from conveyor.core.reconcile import _message_id


@pytest.fixture
def ledger_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("CONVEYOR_DATABASE_URL", f"sqlite:///{tmp_path / 'ledger.db'}")
    from conveyor.core.settings import get_settings

    get_settings.cache_clear()
    Base.metadata.create_all(db.get_engine())
    yield
    db.dispose_all()


@pytest.fixture
def told(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """A listener that records what it is told, in place of the webhooks one."""
    heard: list[dict[str, Any]] = []

    def listener(job: dict[str, Any], session: Session) -> None:
        heard.append(job)

    monkeypatch.setattr(outcomes, "_listeners", [listener])
    return heard


def record(job_id: str, owner: str | None = "alice", *, republishable: bool = True) -> None:
    with session_scope() as session:
        ledger.create_job(
            session,
            NewJob(
                id=job_id,
                name="conveyor.diagnostics.run",
                queue="default",
                owner=owner,
                kwargs={"steps": 1, "password": "hunter2"},
                republishable=republishable,
            ),
        )


def stored(job_id: str) -> Job:
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


def test_an_active_job_keeps_its_arguments_unmasked_and_forgets_them_when_it_ends(
    ledger_db: None,
) -> None:
    record("j1")
    job = stored("j1")
    assert job.kwargs["password"] == "[redacted]"  # what people read
    assert job.payload == {"args": [], "kwargs": {"steps": 1, "password": "hunter2"}}
    with session_scope() as session:
        ledger.mark_succeeded(session, "j1", {"ok": True})
    assert stored("j1").payload is None


def test_only_jobs_published_right_away_keep_their_arguments(ledger_db: None) -> None:
    record("later", republishable=False)  # a workflow's next step, a scheduled send
    assert stored("later").payload is None


@pytest.mark.parametrize("state", [JobState.SUCCEEDED, JobState.DEAD, JobState.CANCELLED])
def test_the_ending_statement_flags_an_owned_jobs_outcome(ledger_db: None, state: str) -> None:
    record("owned")
    record("anonymous", owner=None)
    with session_scope() as session:
        for job_id in ("owned", "anonymous"):
            if state == JobState.SUCCEEDED:
                ledger.mark_succeeded(session, job_id, None)
            elif state == JobState.DEAD:
                ledger.mark_failed(session, job_id, ValueError("x"), None, state=JobState.DEAD)
            else:
                ledger.mark_cancelled(session, job_id)
    assert stored("owned").events_pending is True
    assert stored("anonymous").events_pending is False  # nobody to tell


def test_an_outcome_is_told_once(ledger_db: None, told: list[dict[str, Any]]) -> None:
    record("j1")
    with session_scope() as session:
        ledger.mark_succeeded(session, "j1", {"n": 1})
    outcomes.emit({"id": "j1", "owner": "alice"})
    outcomes.emit({"id": "j1", "owner": "alice"})
    assert [(job["id"], job["state"], job["owner"]) for job in told] == [
        ("j1", "succeeded", "alice")
    ]
    assert outcomes.dispatch_pending() == 0
    assert stored("j1").events_pending is False


def test_a_failing_listener_leaves_the_outcome_to_the_sweep(
    ledger_db: None, told: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    record("j1")
    with session_scope() as session:
        ledger.mark_succeeded(session, "j1", None)

    def broken(job: dict[str, Any], session: Session) -> None:
        raise OperationalError("INSERT", {}, Exception("server closed the connection"))

    monkeypatch.setattr(outcomes, "_listeners", [broken])
    outcomes.emit({"id": "j1", "owner": "alice"})  # logged, not raised: the job still ended
    assert stored("j1").events_pending is True

    monkeypatch.setattr(outcomes, "_listeners", [lambda job, session: told.append(job)])
    assert outcomes.dispatch_pending() == 0  # too fresh: its worker may be telling it now
    with session_scope() as session:
        session.execute(
            update(Job).values(updated_at=utcnow() - outcomes.SWEEP_AFTER - timedelta(seconds=1))
        )
    assert outcomes.dispatch_pending() == 1
    assert outcomes.dispatch_pending() == 0
    assert [job["id"] for job in told] == ["j1"]


def _succeed(connection: Connection, told: bool) -> Mapping[str, Any] | None:
    return ledger.finish_success(connection, "j1", {"ok": True}, told=told)


def test_an_ending_told_in_its_own_transaction_leaves_no_flag(
    ledger_db: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    record("j1")
    seen: list[tuple[str, str]] = []

    def listener(job: dict[str, Any], session: Session) -> None:
        # The listener's transaction is the ending's: it already sees the job ended.
        row = session.get(Job, job["id"])
        assert row is not None
        seen.append((row.state, job["state"]))

    monkeypatch.setattr(outcomes, "_listeners", [listener])
    row = outcomes.end_telling(_succeed)
    assert row is not None
    assert row["state"] == JobState.SUCCEEDED
    assert seen == [(JobState.SUCCEEDED, JobState.SUCCEEDED)]
    assert stored("j1").events_pending is False
    assert outcomes.end_telling(_succeed) is None  # ended already: nothing told twice
    assert len(seen) == 1


def test_a_listener_failing_in_the_ending_transaction_still_ends_the_job(
    ledger_db: None, told: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    record("j1")

    def broken(job: dict[str, Any], session: Session) -> None:
        raise ValueError("the listener is broken")

    monkeypatch.setattr(outcomes, "_listeners", [broken])
    row = outcomes.end_telling(_succeed)
    assert row is not None
    job = stored("j1")
    assert (job.state, job.result, job.events_pending) == (JobState.SUCCEEDED, {"ok": True}, True)


def test_a_write_that_lost_its_connection_is_tried_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(db, "RETRY_PAUSES", (0, 0))
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise OperationalError("UPDATE conveyor_jobs", {}, Exception("terminating connection"))
        return "written"

    assert retry_on_disconnect(flaky) == "written"
    assert len(calls) == 3

    def wrong() -> None:
        raise ValueError("a bug, not an outage")

    with pytest.raises(ValueError, match="a bug"):
        retry_on_disconnect(wrong)


def test_message_ids_are_read_from_queue_and_unacked_entries() -> None:
    message = '{"headers": {"id": "abc", "task": "t"}, "body": "..."}'
    assert _message_id(message) == "abc"
    assert _message_id(f'[{message}, "", "default"]') == "abc"
    assert _message_id("not json") is None
    assert _message_id('{"body": "no headers"}') is None
