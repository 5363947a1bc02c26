"""Queue pauses: how they are stored, told to workers, applied by a worker, and reported."""

from __future__ import annotations

import json
import time
from datetime import timedelta
from fnmatch import fnmatchcase
from types import TracebackType
from typing import Any

import pytest
from celery import Celery
from kombu import Queue
from sqlalchemy.orm import Session

from conveyor.core import heartbeat, queue_control, worker_queues
from conveyor.core.models import Job, JobState, utcnow
from conveyor.core.redis_client import WORKERS_SEEN_KEY, worker_key
from conveyor.core.settings import get_settings
from conveyor.core.workloads import UnknownQueue


@pytest.fixture(autouse=True)
def declared(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVEYOR_QUEUES", "mail,bulk")
    monkeypatch.setenv("CONVEYOR_WORKLOADS", "none")
    monkeypatch.setenv("CONVEYOR_REDIS_URL", "redis://127.0.0.1:1/0")
    get_settings.cache_clear()


class FakeRedis:
    """The few Redis calls heartbeats and queue depths make, in memory."""

    def __init__(self) -> None:
        self.values: dict[str, str] = {}
        self.lists: dict[str, int] = {}
        self.hashes: dict[str, dict[str, str]] = {}

    def scan_iter(self, match: str, count: int = 0) -> list[str]:
        return [key for key in self.values if fnmatchcase(key, match)]

    def mget(self, keys: list[str]) -> list[str | None]:
        return [self.values.get(key) for key in keys]

    def hgetall(self, key: str) -> dict[str, str]:
        return dict(self.hashes.get(key, {}))

    def hdel(self, key: str, *fields: str) -> None:
        for name in fields:
            self.hashes.get(key, {}).pop(name, None)

    def pipeline(self, transaction: bool = True) -> FakePipeline:
        return FakePipeline(self)


class FakePipeline:
    def __init__(self, client: FakeRedis) -> None:
        self.client = client
        self.replies: list[int] = []

    def __enter__(self) -> FakePipeline:
        return self

    def __exit__(self, *_: type[BaseException] | BaseException | TracebackType | None) -> None:
        pass

    def llen(self, key: str) -> None:
        self.replies.append(self.client.lists.get(key, 0))

    def execute(self) -> list[int]:
        return self.replies


class FakeControl:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, list[str] | None]] = []

    def cancel_consumer(self, queue: str, destination: list[str] | None = None, **_: Any) -> None:
        self.calls.append(("cancel", queue, destination))

    def add_consumer(self, queue: str, destination: list[str] | None = None, **_: Any) -> None:
        self.calls.append(("add", queue, destination))


class FakeApp:
    def __init__(self) -> None:
        self.control = FakeControl()


def test_pause_is_stored_once_and_resume_removes_it(session: Session) -> None:
    assert queue_control.pause(session, "mail", by="ops") is True
    session.commit()
    assert queue_control.pause(session, "mail", by="someone else") is False
    session.commit()
    row = queue_control.paused_queues(session)["mail"]
    assert row.paused_by == "ops", "a second pause keeps the first one's record"
    assert row.paused_at is not None
    assert set(queue_control.paused_queues(session)) == {"mail"}

    assert queue_control.resume(session, "mail") is True
    session.commit()
    assert queue_control.resume(session, "mail") is False
    assert queue_control.paused_queues(session) == {}


@pytest.mark.parametrize("action", ["pause", "resume"])
def test_an_undeclared_queue_is_refused_naming_the_setting(session: Session, action: str) -> None:
    with pytest.raises(UnknownQueue, match="CONVEYOR_QUEUES") as raised:
        getattr(queue_control, action)(session, "nope")
    assert "'nope'" in str(raised.value)
    assert "mail" in str(raised.value), "the message lists the declared queues"
    assert queue_control.paused_queues(session) == {}


def test_a_pause_is_told_to_every_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    app = FakeApp()
    assert queue_control.announce("mail", paused=True, app=app)  # type: ignore[arg-type]
    assert app.control.calls == [("cancel", "mail", None)]


def test_a_resume_is_told_only_to_workers_assigned_the_queue(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    workers = {
        "w1@h": {"hostname": "w1@h", "queues": ["mail", "bulk"]},
        "w2@h": {"hostname": "w2@h", "queues": ["bulk"]},
    }
    monkeypatch.setattr(heartbeat, "live_workers", lambda client=None: workers)
    app = FakeApp()
    assert queue_control.announce("mail", paused=False, app=app)  # type: ignore[arg-type]
    assert app.control.calls == [("add", "mail", ["w1@h"])]


def test_a_resume_with_no_assigned_worker_is_told_to_nobody(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # An empty destination would broadcast to every worker.
    monkeypatch.setattr(heartbeat, "live_workers", lambda client=None: {})
    app = FakeApp()
    assert queue_control.announce("mail", paused=False, app=app)  # type: ignore[arg-type]
    assert app.control.calls == []


def _celery_selecting(names: list[str]) -> Celery:
    app = Celery("t", set_as_current=False)
    app.conf.task_queues = [Queue(name, routing_key=name) for name in ("mail", "bulk", "other")]
    app.amqp.queues.select(names)
    return app


class FakeWorker:
    def __init__(self, app: Celery) -> None:
        self.app = app


@pytest.mark.parametrize(
    ("selected", "paused", "consumed"),
    [
        (["mail", "bulk"], {"mail"}, ["bulk"]),
        # Every queue paused: nothing at all, not Celery's "no selection means every queue".
        (["mail", "bulk"], {"mail", "bulk"}, []),
        # No -Q: every declared queue is assigned.
        ([], {"other"}, ["mail", "bulk"]),
    ],
)
def test_a_starting_worker_leaves_out_paused_queues_but_keeps_them_assigned(
    monkeypatch: pytest.MonkeyPatch, selected: list[str], paused: set[str], consumed: list[str]
) -> None:
    monkeypatch.setattr(worker_queues, "_assigned", [])
    monkeypatch.setattr(worker_queues, "paused_names", lambda: paused)
    app = _celery_selecting(selected)
    worker_queues.leave_out_paused(FakeWorker(app))
    assert list(app.amqp.queues.consume_from) == consumed
    assert worker_queues.assigned() == (selected or ["mail", "bulk", "other"])
    assert worker_queues.consuming_now(app) == consumed


def test_each_beat_brings_this_worker_in_line_with_the_ledger(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(worker_queues, "_assigned", ["mail", "bulk"])
    app = _celery_selecting(["mail", "bulk"])
    fake = FakeApp()
    monkeypatch.setattr(app, "control", fake.control)

    monkeypatch.setattr(worker_queues, "paused_names", lambda: {"mail"})
    assert worker_queues.reconcile(app, "w1@h") == ["bulk"]
    assert fake.control.calls == [("cancel", "mail", ["w1@h"])]

    app.amqp.queues.deselect(["mail"])  # what the worker's loop does on cancel_consumer
    fake.control.calls.clear()
    assert worker_queues.reconcile(app, "w1@h") == ["bulk"]
    assert fake.control.calls == [], "nothing to heal"

    monkeypatch.setattr(worker_queues, "paused_names", lambda: {"other"})
    assert worker_queues.reconcile(app, "w1@h") == ["mail", "bulk"]
    assert fake.control.calls == [("add", "mail", ["w1@h"])]


def test_the_overview_reports_depth_pause_wait_and_consumers(session: Session) -> None:
    client = FakeRedis()
    client.lists["mail"] = 3
    client.lists["mail\x06\x163"] = 2  # a priority sub-list of kombu's Redis transport
    live = {"hostname": "w1@h", "queues": ["mail", "bulk"], "consuming": ["bulk"], "at": 0}
    client.values[worker_key("w1@h")] = json.dumps(live)
    old = utcnow() - timedelta(hours=1)
    for index, (state, created) in enumerate(
        [
            (JobState.SUCCEEDED, old - timedelta(hours=1)),
            (JobState.QUEUED, old),
            (JobState.QUEUED, utcnow()),
        ]
    ):
        session.add(Job(id=f"j{index}", name="t", queue="mail", state=state, created_at=created))
    queue_control.pause(session, "mail", by="ops")
    session.commit()

    overview = {q.name: q for q in queue_control.queue_overview(session, client)}  # type: ignore[arg-type]
    assert list(overview) == ["mail", "bulk", "webhooks", "default"]
    mail = overview["mail"]
    assert (mail.depth, mail.paused, mail.paused_by, mail.consumers) == (5, True, "ops", [])
    assert mail.oldest_waiting_at == old.replace(tzinfo=mail.oldest_waiting_at.tzinfo)  # type: ignore[union-attr]
    bulk = overview["bulk"]
    assert (bulk.depth, bulk.paused, bulk.oldest_waiting_at, bulk.consumers) == (
        0,
        False,
        None,
        ["w1@h"],
    )
    as_json = mail.to_dict()
    assert as_json["paused_at"].endswith("+00:00")
    assert as_json["oldest_waiting_at"] == old.isoformat()


def test_known_workers_are_online_silent_or_stopped_and_forgotten_after_a_day(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CONVEYOR_WORKER_LOST_AFTER_SECONDS", "60")
    get_settings.cache_clear()
    now = time.time()
    client = FakeRedis()
    client.hashes[WORKERS_SEEN_KEY] = {
        "a@h": json.dumps({"hostname": "a@h", "at": now - 5}),
        "b@h": json.dumps({"hostname": "b@h", "at": now - 120}),
        "c@h": json.dumps({"hostname": "c@h", "at": now - 30, "stopped_at": now - 20}),
        "d@h": json.dumps({"hostname": "d@h", "at": now - 2 * 86400}),
        "e@h": "not json",
    }
    found = heartbeat.known_workers(client)  # type: ignore[arg-type]
    assert [(w["hostname"], w["status"]) for w in found] == [
        ("a@h", "online"),
        ("b@h", "silent"),
        ("c@h", "stopped"),
    ]
    assert set(client.hashes[WORKERS_SEEN_KEY]) == {"a@h", "b@h", "c@h"}


def test_resident_memory_counts_the_process_and_its_children() -> None:
    import os
    import subprocess
    import sys

    alone = heartbeat.resident_bytes(os.getpid())
    if alone is None:
        pytest.skip("no /proc here")
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        deadline = time.monotonic() + 10
        while child.pid not in heartbeat._children(os.getpid()):
            assert time.monotonic() < deadline, "the child never appeared under /proc"
            time.sleep(0.05)
        together = heartbeat.resident_bytes(os.getpid())
        assert together is not None
        assert together > alone
    finally:
        child.kill()
        child.wait()
