"""Idempotency records: request hashing, the claim state machine and purging (SQLite)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, func, select, update
from sqlalchemy.orm import Session

from conveyor.core import idempotency
from conveyor.core.idempotency import Outcome
from conveyor.core.models import IdempotencyRecord

PATH = "/api/v1/things"
BODY = b'{"amount": 5, "currency": "USD"}'
TTL = 3600.0


def begin(
    session: Session,
    key: str = "k1",
    body: bytes = BODY,
    owner: str = "alice",
    *,
    now: datetime | None = None,
    abandoned_after: float = idempotency.DEFAULT_ABANDONED_AFTER,
) -> idempotency.Claim:
    return idempotency.begin(
        session,
        owner=owner,
        key=key,
        method="POST",
        path=PATH,
        fingerprint=idempotency.request_hash("POST", PATH, body),
        ttl_seconds=TTL,
        abandoned_after=abandoned_after,
        now=now,
    )


# --- hashing -------------------------------------------------------------------------------


def test_hash_ignores_json_key_order_and_whitespace() -> None:
    a = idempotency.request_hash("POST", PATH, b'{"a": 1, "b": [1, 2], "c": {"y": 1, "x": 2}}')
    b = idempotency.request_hash("post", PATH, b'{"c":{"x":2,"y":1},"b":[1,2],"a":1}')
    assert a == b
    assert len(a) == 64


@pytest.mark.parametrize(
    ("method", "target", "body"),
    [
        ("PUT", PATH, BODY),  # another method
        ("POST", "/api/v1/other", BODY),  # another path
        ("POST", PATH + "?dry_run=true", BODY),  # another query
        ("POST", PATH, b'{"amount": 6, "currency": "USD"}'),  # another value
        ("POST", PATH, b'{"amount": 5.0, "currency": "USD"}'),  # another JSON type
        ("POST", PATH, b""),  # no body
    ],
)
def test_hash_changes_with_method_path_and_body(method: str, target: str, body: bytes) -> None:
    assert idempotency.request_hash(method, target, body) != idempotency.request_hash(
        "POST", PATH, BODY
    )


def test_non_json_bodies_hash_as_raw_bytes() -> None:
    form = b"a=1&b=2"
    assert idempotency.canonical_body(form) == ("raw", form)
    assert idempotency.canonical_body(b"\xff\xfe") == ("raw", b"\xff\xfe")
    assert idempotency.request_hash("POST", PATH, form) != idempotency.request_hash(
        "POST", PATH, b"b=2&a=1"
    )
    # A raw body never collides with the JSON text it would canonicalize to.
    assert idempotency.canonical_body(b'{"a":1}') == ("json", b'{"a":1}')
    deep = b"[" * 100_000 + b"]" * 100_000
    assert idempotency.canonical_body(deep) == ("raw", deep)


@pytest.mark.parametrize("key", ["", "x" * 256, "tab\tin", "caf\u00e9", "line\nbreak"])
def test_bad_keys_are_refused(key: str) -> None:
    with pytest.raises(idempotency.InvalidKey):
        idempotency.validate_key(key)


def test_longest_key_is_accepted(session: Session) -> None:
    key = "k" * idempotency.MAX_KEY_LENGTH
    assert idempotency.validate_key(key) == key
    assert begin(session, key=key).outcome is Outcome.PROCEED


# --- the state machine ---------------------------------------------------------------------


def test_first_request_proceeds_and_holds_the_key_in_flight(session: Session) -> None:
    claim = begin(session)
    assert claim.outcome is Outcome.PROCEED
    record = session.get(IdempotencyRecord, claim.record_id)
    assert record is not None
    assert (record.owner, record.key, record.status) == ("alice", "k1", "in_flight")
    assert record.method == "POST"
    assert record.path == PATH
    expires = record.expires_at.replace(tzinfo=UTC)
    assert timedelta(seconds=TTL - 60) < expires - datetime.now(UTC) <= timedelta(seconds=TTL)


def test_second_request_while_in_flight_gets_in_flight(session: Session) -> None:
    assert begin(session).outcome is Outcome.PROCEED
    assert begin(session).outcome is Outcome.IN_FLIGHT


def test_done_request_is_replayed_exactly(session: Session) -> None:
    claim = begin(session)
    assert claim.record_id is not None
    body = b'{"job_id":"j-1","status":"queued"}'
    headers = {
        "Content-Type": "application/json",
        "Location": "/api/v1/jobs/j-1",
        "Content-Length": "34",
        "Set-Cookie": "s=1",
        "Date": "now",
    }
    assert idempotency.complete(
        session, claim.record_id, status_code=202, body=body, headers=headers
    )
    replay = begin(session, body=b'{"currency":"USD","amount":5}')  # same JSON, reordered
    assert replay.outcome is Outcome.REPLAY
    assert replay.response is not None
    assert replay.response.status_code == 202
    assert replay.response.body == body
    # Per-transfer headers are not replayed; the rest are, lower-cased.
    assert replay.response.headers == {
        "content-type": "application/json",
        "location": "/api/v1/jobs/j-1",
    }


def test_binary_response_bodies_survive_the_round_trip(session: Session) -> None:
    claim = begin(session)
    assert claim.record_id is not None
    body = bytes(range(256))
    idempotency.complete(session, claim.record_id, status_code=201, body=body, headers={})
    replay = begin(session)
    assert replay.response is not None
    assert replay.response.body == body
    assert replay.response.headers == {}


def test_other_body_is_a_mismatch_in_flight_or_done(session: Session) -> None:
    claim = begin(session)
    other = b'{"amount": 7, "currency": "USD"}'
    mismatch = begin(session, body=other)
    assert mismatch.outcome is Outcome.MISMATCH
    assert (mismatch.method, mismatch.path) == ("POST", PATH)
    assert claim.record_id is not None
    idempotency.complete(session, claim.record_id, status_code=202, body=b"{}")
    assert begin(session, body=other).outcome is Outcome.MISMATCH


def test_keys_are_scoped_per_owner(session: Session) -> None:
    assert begin(session, owner="alice").outcome is Outcome.PROCEED
    assert begin(session, owner="bob").outcome is Outcome.PROCEED
    assert begin(session, owner="bob", body=b"{}").outcome is Outcome.MISMATCH
    assert session.scalar(select(func.count()).select_from(IdempotencyRecord)) == 2


def test_released_key_can_be_claimed_again(session: Session) -> None:
    claim = begin(session)
    assert claim.record_id is not None
    assert idempotency.release(session, claim.record_id)
    assert not idempotency.release(session, claim.record_id)
    again = begin(session, body=b'{"different": true}')  # a freed key carries no body
    assert again.outcome is Outcome.PROCEED


def test_done_record_is_neither_released_nor_completed_twice(session: Session) -> None:
    claim = begin(session)
    assert claim.record_id is not None
    assert idempotency.complete(session, claim.record_id, status_code=202, body=b"1")
    assert not idempotency.complete(session, claim.record_id, status_code=500, body=b"2")
    assert not idempotency.release(session, claim.record_id)
    replay = begin(session)
    assert replay.response is not None
    assert (replay.response.status_code, replay.response.body) == (202, b"1")


def test_expired_key_is_free_again(session: Session) -> None:
    claim = begin(session)
    assert claim.record_id is not None
    idempotency.complete(session, claim.record_id, status_code=202, body=b"old")
    later = datetime.now(UTC) + timedelta(seconds=TTL + 1)
    fresh = begin(session, body=b'{"new": 1}', now=later)
    assert fresh.outcome is Outcome.PROCEED
    assert fresh.record_id != claim.record_id
    assert session.get(IdempotencyRecord, claim.record_id) is None


def test_abandoned_in_flight_record_is_taken_over(session: Session) -> None:
    claim = begin(session)
    soon = datetime.now(UTC) + timedelta(seconds=10)
    assert begin(session, now=soon, abandoned_after=60).outcome is Outcome.IN_FLIGHT
    late = datetime.now(UTC) + timedelta(seconds=61)
    taken = begin(session, now=late, abandoned_after=60)
    assert taken.outcome is Outcome.PROCEED
    assert taken.record_id != claim.record_id
    # The first request, if it ever finishes, finds its record gone and stores nothing.
    assert claim.record_id is not None
    assert not idempotency.complete(session, claim.record_id, status_code=202, body=b"x")


def test_old_done_record_is_still_replayed_until_it_expires(session: Session) -> None:
    claim = begin(session)
    assert claim.record_id is not None
    idempotency.complete(session, claim.record_id, status_code=202, body=b"kept")
    late = datetime.now(UTC) + timedelta(seconds=TTL - 5)
    assert begin(session, now=late, abandoned_after=60).outcome is Outcome.REPLAY


def test_concurrent_claims_let_exactly_one_proceed(engine: Engine) -> None:
    threads = 16
    barrier = threading.Barrier(threads)
    outcomes: list[Outcome] = []
    lock = threading.Lock()

    def contend() -> None:
        with Session(engine) as own:
            barrier.wait()
            outcome = begin(own).outcome
        with lock:
            outcomes.append(outcome)

    workers = [threading.Thread(target=contend) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(30)
    assert len(outcomes) == threads
    assert outcomes.count(Outcome.PROCEED) == 1
    assert outcomes.count(Outcome.IN_FLIGHT) == threads - 1


# --- purging -------------------------------------------------------------------------------


def test_purge_expired_deletes_in_batches_and_keeps_live_records(session: Session) -> None:
    for n in range(25):
        begin(session, key=f"old-{n}")
    for n in range(3):
        begin(session, key=f"live-{n}")
    past = datetime.now(UTC) - timedelta(seconds=1)
    session.execute(
        update(IdempotencyRecord).where(IdempotencyRecord.key.like("old-%")).values(expires_at=past)
    )
    session.commit()
    assert idempotency.purge_expired(session, batch_size=10) == 25
    keys = set(session.scalars(select(IdempotencyRecord.key)))
    assert keys == {"live-0", "live-1", "live-2"}
    assert idempotency.purge_expired(session, batch_size=10) == 0
    later = datetime.now(UTC) + timedelta(seconds=TTL + 1)
    assert idempotency.purge_expired(session, batch_size=2, now=later) == 3


def test_purge_needs_a_positive_batch(session: Session) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        idempotency.purge_expired(session, batch_size=0)
