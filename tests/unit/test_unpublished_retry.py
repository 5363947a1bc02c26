"""A retry that cannot be published gives its message back instead of dropping it."""

from __future__ import annotations

from typing import Any

import pytest
from celery.canvas import Signature
from celery.exceptions import Reject

from conveyor.core.celery_app import get_celery
from conveyor.core.errors import TransientError
from conveyor.core.settings import get_settings
from conveyor.core.task import ConveyorTask


class Flaky(ConveyorTask):
    track = False  # no ledger here: this is about the message
    name = "tests.unit.flaky"

    def run(self, *args: Any, **kwargs: Any) -> None:
        raise TransientError("the provider timed out")


def test_a_retry_the_broker_refuses_requeues_the_message(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CONVEYOR_REDIS_URL", "redis://127.0.0.1:1/0")
    get_settings.cache_clear()
    task = get_celery().register_task(Flaky())

    def broker_away(self: Signature, *args: Any, **kwargs: Any) -> None:
        raise ConnectionError("Error 111 connecting to 127.0.0.1:1. Connection refused.")

    monkeypatch.setattr(Signature, "apply_async", broker_away)
    task.push_request(id="job-1", retries=0, called_directly=False, is_eager=False)
    try:
        with pytest.raises(Reject) as info:
            task()
    finally:
        task.pop_request()
    # Celery alone would reject without requeue: the job would be gone.
    assert info.value.requeue is True


class Tracked(ConveyorTask):
    name = "tests.unit.tracked_retry"

    def run(self, *args: Any, **kwargs: Any) -> None:
        raise TransientError("the provider timed out")


def test_a_retry_the_ledger_cannot_record_does_not_fail_the_job(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The retry is already published when on_retry runs: a database gone at that moment must
    not turn the job into a dead letter while its next attempt waits in the queue."""
    from sqlalchemy.exc import OperationalError

    from conveyor.core import task as task_module

    calls: list[str] = []

    def database_gone(*args: Any, **kwargs: Any) -> None:
        calls.append("write")
        raise OperationalError("UPDATE conveyor_jobs", {}, Exception("server closed"))

    monkeypatch.setattr(task_module.ledger, "mark_retrying", database_gone)
    monkeypatch.setattr("conveyor.core.db.RETRY_PAUSES", (0.0,))
    task = get_celery().register_task(Tracked())
    task.on_retry(TransientError("x"), "job-2", (), {}, None)
    # Tried again once on a fresh connection, then given up with a warning, not raised.
    assert calls == ["write", "write"]
    assert "retrying not recorded" in caplog.text
