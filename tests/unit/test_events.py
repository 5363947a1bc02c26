"""Job events (pub/sub and server-sent) carry the error's type and message, not its traceback."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from conveyor.api.job_stream import _load_snapshot, _sse
from conveyor.core import db, events, ledger
from conveyor.core.ledger import NewJob
from conveyor.core.models import Base
from conveyor.core.settings import get_settings

TRACEBACK = 'Traceback (most recent call last):\n  File "smtp.py", line 1\nConnectionError: down'


def snapshot_with_error() -> dict[str, Any]:
    return {
        "id": "job-1",
        "state": "retrying",
        "progress": {"current": 1, "total": 3, "message": None},
        "error": {"type": "ConnectionError", "message": "down", "traceback": TRACEBACK},
    }


def test_the_payload_keeps_type_and_message_and_drops_the_traceback() -> None:
    snapshot = snapshot_with_error()
    payload = events.event_payload(snapshot)
    assert payload["error"] == {"type": "ConnectionError", "message": "down"}
    assert payload["progress"] == snapshot["progress"]
    assert snapshot["error"]["traceback"] == TRACEBACK  # the caller's snapshot is untouched


def test_a_job_without_an_error_is_sent_as_it_is() -> None:
    snapshot = {**snapshot_with_error(), "error": None}
    assert events.event_payload(snapshot) == snapshot


def test_published_events_have_no_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    published: list[tuple[str, str]] = []

    class FakeRedis:
        def publish(self, channel: str, data: str) -> int:
            published.append((channel, data))
            return 1

        def exists(self, key: str) -> int:
            return int(key == events.WATCHING_KEY)  # an API stream follows job events

    monkeypatch.setattr(events, "get_redis", FakeRedis)
    monkeypatch.setattr(events._Watching, "until", 0.0)  # ask again, whatever was cached
    events.publish_job(snapshot_with_error())
    [(_, data)] = published
    assert json.loads(data)["error"] == {"type": "ConnectionError", "message": "down"}
    assert "Traceback" not in data


def test_server_sent_events_have_no_traceback_but_the_job_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONVEYOR_DATABASE_URL", "sqlite:///" + (tmp_path / "sse.db").as_posix())
    get_settings.cache_clear()
    Base.metadata.create_all(db.get_engine())
    new = NewJob(id="job-1", name="conveyor.diagnostics.run", queue="default")
    with db.session_scope() as session:
        ledger.create_job(session, new)
        ledger.mark_started(session, new, worker_host="w1")
        ledger.mark_retrying(session, "job-1", ConnectionError("down"), TRACEBACK)
    with db.session_scope() as session:
        job = ledger.get_job(session, "job-1")
        assert job is not None
        assert ledger.job_to_dict(job)["error"]["traceback"] == TRACEBACK  # GET /jobs/{id}

    snapshot = _load_snapshot("job-1", None)
    assert snapshot is not None
    assert snapshot["error"] == {"type": "ConnectionError", "message": "down"}
    frame = _sse(snapshot, 1)
    assert "Traceback" not in frame
    data = json.loads(frame.split("data: ", 1)[1])
    assert data["state"] == "retrying"
    assert data["error"] == {"type": "ConnectionError", "message": "down"}


def test_nothing_is_published_while_no_stream_follows(monkeypatch: pytest.MonkeyPatch) -> None:
    published: list[str] = []
    asked: list[str] = []

    class NobodyWatching:
        def publish(self, channel: str, data: str) -> int:
            published.append(channel)
            return 0

        def exists(self, key: str) -> int:
            asked.append(key)
            return 0

    monkeypatch.setattr(events, "get_redis", NobodyWatching)
    monkeypatch.setattr(events._Watching, "until", 0.0)
    for _ in range(5):
        events.publish_job(snapshot_with_error())
    assert published == []
    assert asked == [events.WATCHING_KEY]  # asked once, then the answer is kept a moment
