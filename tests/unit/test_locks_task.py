"""ConveyorTask admission: a job that must wait is re-published, not retried (no servers)."""

from __future__ import annotations

import time
from typing import Any

import pytest
from celery import Celery
from celery.canvas import Signature
from celery.exceptions import Ignore

from conveyor.core import task as task_module
from conveyor.core.locks import Lock
from conveyor.core.rate_limit import Decision
from conveyor.core.task import (
    HEADER_RATE_TICKET,
    HEADER_WAITING,
    MAX_WAIT_DELAY,
    ConveyorTask,
)


class Waiter(ConveyorTask):
    name = "unit.waiter"
    track = False  # no ledger here
    overlap_key = "k:{a}"
    overlap_wait = 0.5

    def run(self, *args: Any, **kwargs: Any) -> str:
        return "ran"


class Limited(ConveyorTask):
    name = "unit.limited"
    track = False
    rate = "10/s"
    rate_limit_key = "site:{a}"

    def run(self, *args: Any, **kwargs: Any) -> str:
        return "ran"


class FakeRedis:
    def exists(self, *keys: str) -> int:
        return 0


@pytest.fixture
def published(monkeypatch: pytest.MonkeyPatch) -> list[Signature]:
    sent: list[Signature] = []

    def capture(self: Signature, *args: Any, **kwargs: Any) -> None:
        sent.append(self)

    monkeypatch.setattr(Signature, "apply_async", capture)
    monkeypatch.setattr(task_module, "get_redis", FakeRedis)
    return sent


def _bound(task_class: type[ConveyorTask], **request: Any) -> ConveyorTask:
    app = Celery("unit", set_as_current=False)
    task = app.register_task(task_class())
    task.push_request(
        id="job-1",
        retries=2,
        called_directly=False,
        headers={"conveyor_recorded": "1", "trace": "t-1"},
        delivery_info={"exchange": "", "routing_key": "reports"},
        **request,
    )
    return task


def test_a_taken_lock_republishes_the_same_job_without_a_retry(
    published: list[Signature], monkeypatch: pytest.MonkeyPatch
) -> None:
    def taken(self: Lock, wait: float | None = None) -> bool:
        self.retry_after = 0.2
        return False

    monkeypatch.setattr(Lock, "acquire", taken)
    task = _bound(Waiter)
    with pytest.raises(Ignore):
        task(a=1)
    (again,) = published
    assert again.id == "job-1"
    assert again.kwargs == {"a": 1}
    assert again.options["retries"] == 2, "waiting must not count as a retry"
    assert again.options["queue"] == "reports"
    # The holder's lock expires in 0.2 s, sooner than overlap_wait: check then (±20 %).
    assert 0.15 <= again.options["countdown"] <= 0.25
    headers = again.options["headers"]
    assert headers["trace"] == "t-1", "the message's own headers travel with it"
    assert headers["conveyor_recorded"] == "1"
    assert headers[HEADER_WAITING] == "waiting for lock k:1"


def test_a_free_lock_runs_the_job_and_releases_after(
    published: list[Signature], monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str] = []
    monkeypatch.setattr(Lock, "acquire", lambda self, wait=None: events.append("acquire") or True)
    monkeypatch.setattr(Lock, "start_renewing", lambda self, **_: events.append("renew"))
    monkeypatch.setattr(Lock, "release", lambda self: events.append("release") or True)
    assert _bound(Waiter)(a=1) == "ran"
    assert events == ["acquire", "renew", "release"]
    assert published == []


def test_rate_limit_books_a_slot_and_the_booked_run_goes_without_asking(
    published: list[Signature], monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[str] = []

    def reserve(key: str, rate: Any, *, horizon: float) -> Decision:
        asked.append(key)
        assert horizon == MAX_WAIT_DELAY
        return Decision(allowed=False, retry_after=3.0, reserved=True)

    monkeypatch.setattr(task_module.rate_limit, "reserve", reserve)
    before = time.time()
    with pytest.raises(Ignore):
        _bound(Limited)(a="example.com")
    (again,) = published
    ticket = again.options["headers"][HEADER_RATE_TICKET]
    assert ticket["key"] == "site:example.com"
    assert before + 3.0 <= ticket["at"] <= time.time() + 3.0
    assert again.options["countdown"] == pytest.approx(3.0, abs=0.01)
    assert asked == ["site:example.com"]

    # The same job at its booked time runs without asking the limiter again...
    due = {"key": "site:example.com", "at": time.time() - 0.01}
    assert _bound(Limited, **{HEADER_RATE_TICKET: due})(a="example.com") == "ran"
    assert asked == ["site:example.com"]
    # ...but long after it (a worker died holding it) it must ask again.
    stale = {"key": "site:example.com", "at": time.time() - 5}
    with pytest.raises(Ignore):
        _bound(Limited, **{HEADER_RATE_TICKET: stale})(a="example.com")
    assert asked == ["site:example.com"] * 2


def test_a_denied_run_never_proceeds_and_keeps_no_ticket(
    published: list[Signature], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        task_module.rate_limit,
        "reserve",
        lambda key, rate, horizon: Decision(allowed=False, retry_after=0.01),
    )
    stale = {"key": "site:a", "at": time.time() - 5}
    with pytest.raises(Ignore):
        _bound(Limited, **{HEADER_RATE_TICKET: stale})(a="a")
    (again,) = published
    assert HEADER_RATE_TICKET not in again.options["headers"]
    # Slots are booked to the horizon: come back once half of it has drained.
    assert MAX_WAIT_DELAY / 2 <= again.options["countdown"] <= MAX_WAIT_DELAY


def test_an_eager_run_waits_in_place(
    published: list[Signature], monkeypatch: pytest.MonkeyPatch
) -> None:
    answers = iter([False, False, True])

    def acquire(self: Lock, wait: float | None = None) -> bool:
        self.retry_after = 0.01
        return next(answers)

    monkeypatch.setattr(Lock, "acquire", acquire)
    monkeypatch.setattr(Lock, "start_renewing", lambda self, **_: None)
    monkeypatch.setattr(Lock, "release", lambda self: True)
    app = Celery("unit", set_as_current=False)
    task = app.register_task(Waiter())
    started = time.monotonic()
    assert task.apply(kwargs={"a": 1}).get() == "ran"
    assert published == [], "nothing re-published: it would run at once, recursively"
    assert time.monotonic() - started >= 0.08  # two waits of MIN_WAIT_DELAY
