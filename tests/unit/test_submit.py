"""`submit`: the ledger row (and its tags) written before the message is sent, once per id."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from conveyor.core.jobs import Submission, submit
from conveyor.core.models import Job, JobTag


class RecordingApp:
    """A Celery app as submit uses it: a task registry and send_task, which only records."""

    def __init__(self, fail: bool = False) -> None:
        self.tasks: dict[str, Any] = {}
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.fail = fail

    def send_task(self, name: str, **options: Any) -> None:
        if self.fail:
            raise ConnectionError("broker away")
        self.sent.append((name, options))


@pytest.fixture
def ledger(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Engine:
    monkeypatch.setenv("CONVEYOR_DATABASE_URL", str(engine.url))
    monkeypatch.setenv("CONVEYOR_REDIS_URL", "redis://127.0.0.1:1/0")
    return engine


def test_the_row_and_its_tags_are_written_then_the_message_sent(ledger: Engine) -> None:
    app = RecordingApp()
    submitted = Submission(
        "conveyor.diagnostics.run", kwargs={"steps": 2}, owner="alice", tags=["a", "b", "a"]
    )
    job = submit(submitted, app=app)  # type: ignore[arg-type]

    with Session(ledger) as session:
        row = session.get(Job, job.id)
        tags = session.scalars(select(JobTag.tag).where(JobTag.job_id == job.id)).all()
    assert row is not None
    assert (row.state, row.owner, row.kwargs, row.attempts) == ("queued", "alice", {"steps": 2}, 0)
    assert row.payload == {"args": [], "kwargs": {"steps": 2}}
    assert sorted(tags) == ["a", "b"]
    assert (job.id, job.state, job.queue) == (row.id, "queued", "default")
    assert [(name, options["task_id"]) for name, options in app.sent] == [
        ("conveyor.diagnostics.run", job.id)
    ]


def test_an_id_submitted_again_returns_the_recorded_job_and_sends_nothing(ledger: Engine) -> None:
    app = RecordingApp()
    first = submit(Submission("conveyor.diagnostics.run", job_id="fixed-1"), app=app)  # type: ignore[arg-type]
    again = submit(Submission("conveyor.diagnostics.run", job_id="fixed-1"), app=app)  # type: ignore[arg-type]
    assert again.id == first.id == "fixed-1"
    assert len(app.sent) == 1


def test_a_refused_publish_leaves_the_job_failed_not_queued(ledger: Engine) -> None:
    with pytest.raises(ConnectionError):
        submit(Submission("conveyor.diagnostics.run", job_id="lost-1"), app=RecordingApp(fail=True))  # type: ignore[arg-type]
    with Session(ledger) as session:
        row = session.get(Job, "lost-1")
    assert row is not None
    assert row.state == "failed"
