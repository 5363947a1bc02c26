"""`submit`: the ledger row (and its tags) written before the message is sent, once per id."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from conveyor.core.jobs import Submission, submit, submit_many
from conveyor.core.models import Job, JobTag


class RecordingApp:
    """A Celery app as submit uses it: a task registry and send_task, which only records."""

    def __init__(self, fail: bool = False, fail_after: int | None = None) -> None:
        self.tasks: dict[str, Any] = {}
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.fail = fail
        self.fail_after = fail_after
        self.producers: list[object] = []

    def send_task(self, name: str, **options: Any) -> None:
        if self.fail or (self.fail_after is not None and len(self.sent) >= self.fail_after):
            raise ConnectionError("broker away")
        self.sent.append((name, options))

    @contextmanager
    def producer_or_acquire(self) -> Iterator[object]:
        producer = object()
        self.producers.append(producer)
        yield producer


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


def _states(ledger: Engine, ids: list[str]) -> list[str | None]:
    with Session(ledger) as session:
        rows = {job.id: job.state for job in session.scalars(select(Job).where(Job.id.in_(ids)))}
    return [rows.get(job_id) for job_id in ids]


def test_many_are_recorded_together_then_sent_over_one_producer(ledger: Engine) -> None:
    app = RecordingApp()
    submit(Submission("conveyor.diagnostics.run", job_id="old-1"), app=app)  # type: ignore[arg-type]
    batch = [
        Submission("conveyor.diagnostics.run", kwargs={"steps": n}, owner="bob", tags=[f"t{n}"])
        for n in range(3)
    ]
    batch.insert(1, Submission("conveyor.diagnostics.run", job_id="old-1"))
    jobs = submit_many(batch, app=app)  # type: ignore[arg-type]

    assert [job.id for job in jobs][1] == "old-1"  # recorded already: answered, not sent again
    new_ids = [job.id for job in jobs if job.id != "old-1"]
    assert _states(ledger, new_ids) == ["queued"] * 3
    with Session(ledger) as session:
        tags = dict(session.execute(select(JobTag.job_id, JobTag.tag)).tuples().all())
    assert [tags[job_id] for job_id in new_ids] == ["t0", "t1", "t2"]
    sent = [(options["task_id"], options["kwargs"], options["producer"]) for _, options in app.sent]
    assert [(job_id, kwargs) for job_id, kwargs, _ in sent[1:]] == [
        (job_id, {"steps": n}) for n, job_id in enumerate(new_ids)
    ]
    assert {producer for _, _, producer in sent[1:]} == {app.producers[-1]}


def test_a_broker_refusing_part_way_fails_the_rest_and_says_so(ledger: Engine) -> None:
    app = RecordingApp(fail_after=1)
    ids = ["many-1", "many-2", "many-3"]
    with pytest.raises(ConnectionError):
        submit_many([Submission("conveyor.diagnostics.run", job_id=i) for i in ids], app=app)  # type: ignore[arg-type]
    assert _states(ledger, ids) == ["queued", "failed", "failed"]
    assert [options["task_id"] for _, options in app.sent] == ["many-1"]


def test_one_bad_submission_records_none_of_the_batch(ledger: Engine) -> None:
    app = RecordingApp()
    good = Submission("conveyor.diagnostics.run", job_id="fine-1")
    bad = Submission("conveyor.diagnostics.run", job_id="bad-1", tags=["x" * 101])
    with pytest.raises(ValueError, match="tags"):
        submit_many([good, bad], app=app)  # type: ignore[arg-type]
    assert _states(ledger, ["fine-1", "bad-1"]) == [None, None]
    assert app.sent == []


def test_submit_leaves_the_shown_arguments_to_the_publish_hook(ledger: Engine) -> None:
    """Celery's own repr of the arguments is skipped: the before_task_publish hook writes
    the masked one (tests/unit/test_redaction.py), for this and every other publish."""
    app = RecordingApp()
    submit(Submission("conveyor.diagnostics.run", kwargs={"api_token": "s3cr3t"}), app=app)  # type: ignore[arg-type]
    ((_, options),) = app.sent
    assert options["kwargs"] == {"api_token": "s3cr3t"}  # the task itself gets the real value
    assert (options["argsrepr"], options["kwargsrepr"]) == ("", "")
