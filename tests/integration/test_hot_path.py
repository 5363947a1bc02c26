"""What the tracked job's hot path leaves out, and what still holds without it: no result in
Celery's backend for a submitted job (the ledger has it), and no job event published while
nobody follows job events."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
import redis
from celery.utils.threads import LocalStack
from sqlalchemy.exc import OperationalError

from conveyor.api import event_hub
from conveyor.core import db, events, ledger
from conveyor.core.celery_app import get_celery
from conveyor.core.jobs import Submission, submit_many
from conveyor.core.redis_client import job_channel
from conveyor.core.task import ConveyorTask
from tests.integration.conftest import Stack, submit_diagnostics

pytestmark = pytest.mark.integration

TASK = "conveyor.diagnostics.run"


def _messages(pubsub: redis.client.PubSub, seconds: float) -> list[str]:
    found: list[str] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        message = pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
        if message is not None:
            found.append(str(message["data"]))
    return found


def test_a_submitted_jobs_result_lives_in_the_ledger_only(
    stack: Stack, admin: httpx.Client, redis_url: str
) -> None:
    job_id = submit_diagnostics(admin, steps=1, step_seconds=0)
    job = stack.wait_job(job_id, {"succeeded"})
    assert job["result"] == {"steps": 1, "attempt": 1}
    assert admin.get(f"/api/v1/jobs/{job_id}").json()["result"] == {"steps": 1, "attempt": 1}
    client = redis.Redis.from_url(redis_url)
    assert client.exists(f"celery-task-meta-{job_id}") == 0


def _until_nobody_watches(client: redis.Redis, seconds: float = 60) -> None:
    """An event stream of an earlier test on the shared stack (a browser's, say) may still be
    open on the server, which marks the key again every second: wait until it has closed."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        client.delete(events.WATCHING_KEY)
        time.sleep(event_hub.MARK_EVERY_SECONDS + event_hub.READ_SECONDS + 0.5)
        if not client.exists(events.WATCHING_KEY):
            time.sleep(3 * events.CHECK_SECONDS)  # the workers' cached answer expires
            return
    raise AssertionError(f"an API process still follows job events after {seconds:.0f}s")


def test_job_events_are_published_only_while_someone_follows_them(
    stack: Stack, admin: httpx.Client, redis_url: str
) -> None:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    pubsub = client.pubsub()  # type: ignore[no-untyped-call]
    try:
        # A plain subscriber is nobody, as far as workers know: no API stream follows.
        _until_nobody_watches(client)
        unwatched = submit_diagnostics(admin, steps=2, step_seconds=0.05)
        pubsub.subscribe(job_channel(unwatched))
        stack.wait_job(unwatched, {"succeeded"})
        assert _messages(pubsub, 0.5) == []

        # What an API process with an open stream does (api/event_hub.py).
        client.set(events.WATCHING_KEY, "test", px=30_000)
        time.sleep(3 * events.CHECK_SECONDS)
        watched = submit_diagnostics(admin, steps=2, step_seconds=0.05)
        pubsub.subscribe(job_channel(watched))
        stack.wait_job(watched, {"succeeded"})
        states = _messages(pubsub, 0.5)
        assert any('"succeeded"' in message for message in states), states
    finally:
        client.delete(events.WATCHING_KEY)
        pubsub.close()


def test_an_open_event_stream_tells_workers_to_publish(
    stack: Stack, admin: httpx.Client, redis_url: str
) -> None:
    client = redis.Redis.from_url(redis_url)
    client.delete(events.WATCHING_KEY)
    job_id = submit_diagnostics(admin, steps=4, step_seconds=0.3)
    with admin.stream("GET", f"/api/v1/jobs/{job_id}/events") as response:
        assert response.status_code == 200
        ttl = client.pttl(events.WATCHING_KEY)
        assert 0 < ttl <= events.WATCHING_TTL_SECONDS * 1000
        lines = [line for line in response.iter_lines() if line.startswith("event: ")]
    assert lines[-1] == "event: succeeded"
    assert "event: progress" in lines


def test_a_result_the_ledger_refused_is_kept_for_the_reconciler(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Probe(ConveyorTask):
        """A tracked task of its own, bound here: the registry's may have been replaced by
        an earlier test that configured the app anew."""

        name = "tests.hot_path.probe"

    Probe.bind(get_celery())
    # bind() makes a request stack only for a class not bound before, and a bound base
    # class (ConveyorTask, after some earlier test) counts as bound.
    Probe.request_stack = LocalStack()
    task = Probe()
    job_id = "hot-path-refused"
    backend = get_celery().backend
    backend.forget(job_id)

    def refused(*_: Any, **__: Any) -> None:
        raise OperationalError("UPDATE", {}, Exception("the database went away"))

    monkeypatch.setattr(ledger, "finish_success", refused)
    monkeypatch.setattr(db, "RETRY_PAUSES", ())
    task.push_request(id=job_id, ignore_result=True)
    try:
        with pytest.raises(OperationalError):
            task.on_success({"rows": 3}, job_id, (), {})
    finally:
        task.pop_request()
    stored = backend.get_task_meta(job_id)
    assert (stored["status"], stored["result"]) == ("SUCCESS", {"rows": 3})
    backend.forget(job_id)


@pytest.mark.both_brokers
def test_jobs_submitted_together_all_run(stack: Stack) -> None:
    batch = [
        Submission(TASK, kwargs={"steps": 1, "step_seconds": 0, "fail_attempts": n % 2})
        for n in range(20)
    ]
    jobs = submit_many(batch)
    assert len({job.id for job in jobs}) == 20
    for job in jobs:
        finished = stack.wait_job(job.id, {"succeeded", "dead"})
        assert finished["state"] == "succeeded"
        assert finished["kwargs"]["fail_attempts"] in (0, 1)
