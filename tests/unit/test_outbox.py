"""The outbox: a job's ending flags its outcome events in the same statement; telling them
claims the flag in the listeners' transaction, so each outcome is told exactly once."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from conveyor.core import db, ledger, outcome_listeners, outcomes
from conveyor.core.db import autocommit, retry_on_disconnect, session_scope
from conveyor.core.ledger import NewJob
from conveyor.core.models import Base, Job, JobState, WebhookEndpoint, utcnow
from conveyor.core.reconcile import _message_id
from conveyor.webhooks.listener import has_endpoints


@pytest.fixture
def ledger_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("CONVEYOR_DATABASE_URL", f"sqlite:///{tmp_path / 'ledger.db'}")
    from conveyor.core.settings import get_settings

    get_settings.cache_clear()
    Base.metadata.create_all(db.get_engine())
    yield
    db.dispose_all()


def listening(
    monkeypatch: pytest.MonkeyPatch,
    *listeners: outcome_listeners.Listener,
    wanted: outcome_listeners.Wanted | None = None,
) -> None:
    """These listeners in place of the process's own (the webhooks one, once imported)."""
    monkeypatch.setattr(outcome_listeners, "_listeners", list(listeners))
    monkeypatch.setattr(outcome_listeners, "_wanted", dict.fromkeys(listeners, wanted))


@pytest.fixture
def told(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """A listener that records what it is told, in place of the webhooks one."""
    heard: list[dict[str, Any]] = []

    def listener(job: dict[str, Any], session: Session) -> None:
        heard.append(job)

    listening(monkeypatch, listener)
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
def test_the_ending_statement_flags_an_owned_jobs_outcome(
    ledger_db: None, told: list[dict[str, Any]], state: str
) -> None:
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

    listening(monkeypatch, broken)
    outcomes.emit({"id": "j1", "owner": "alice"})  # logged, not raised: the job still ended
    assert stored("j1").events_pending is True

    listening(monkeypatch, lambda job, session: told.append(job))
    assert outcomes.dispatch_pending() == 0  # too fresh: its worker may be telling it now
    with session_scope() as session:
        session.execute(
            update(Job).values(updated_at=utcnow() - outcomes.SWEEP_AFTER - timedelta(seconds=1))
        )
    assert outcomes.dispatch_pending() == 1
    assert outcomes.dispatch_pending() == 0
    assert [job["id"] for job in told] == ["j1"]


def _endpoint(owner: str) -> None:
    with session_scope() as session:
        session.add(WebhookEndpoint(id=owner, owner=owner, url="https://example.com/", secret="s"))


def _succeed(job_id: str) -> Mapping[str, Any] | None:
    with autocommit() as connection:
        return ledger.finish_success(connection, job_id, {"ok": True})


def test_an_ending_flags_only_owners_a_listener_wants(
    ledger_db: None, told: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    listening(monkeypatch, lambda job, session: told.append(job), wanted=has_endpoints)
    _endpoint("alice")
    for job_id, owner in (("a1", "alice"), ("b1", "bob"), ("a2", "alice"), ("b2", "bob")):
        record(job_id, owner)
    flags = {job_id: (_succeed(job_id) or {}).get("events_pending") for job_id in ("a1", "b1")}
    with session_scope() as session:  # the ORM's endings write the same flag
        ledger.mark_cancelled(session, "a2")
        ledger.mark_cancelled(session, "b2")
    assert flags == {"a1": True, "b1": False}
    assert (stored("a2").events_pending, stored("b2").events_pending) == (True, False)
    outcomes.emit({"id": "a1", "owner": "alice"})
    outcomes.emit({"id": "b1", "owner": "bob"})  # not flagged: nothing to claim
    assert [job["id"] for job in told] == ["a1"]


def test_a_listener_registered_later_changes_what_the_next_ending_flags(
    ledger_db: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    listening(monkeypatch)  # no listener here: every owned job is flagged for the sweep
    record("b1", "bob")
    record("b2", "bob")
    assert (_succeed("b1") or {}).get("events_pending") is True
    monkeypatch.setattr(outcome_listeners, "_listeners", [])
    monkeypatch.setattr(outcome_listeners, "_wanted", {})
    outcome_listeners.on_job_outcome(lambda job, session: None, wanted=has_endpoints)
    assert (_succeed("b2") or {}).get("events_pending") is False


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
