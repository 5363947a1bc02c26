"""Idempotency-Key on POST /api/v1/diagnostics/jobs, against real API processes and a worker."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import random
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from conveyor.core import api_keys, db, idempotency
from conveyor.core.models import IdempotencyRecord
from tests.integration.conftest import Stack, extra_api

PATH = "/api/v1/diagnostics/jobs"
HEADER = "Idempotency-Key"
REPLAYED = "Idempotent-Replayed"


def unique_body() -> dict[str, Any]:
    """A diagnostics body no other test sends, so its jobs can be told apart in the ledger."""
    # Nine decimals: about ten million values, so two tests' bodies do not collide.
    return {"steps": 1, "step_seconds": round(random.uniform(0.0001, 0.01), 9)}


def jobs_with_kwargs(client: httpx.Client, body: dict[str, Any]) -> list[dict[str, Any]]:
    """Every job in the ledger (all pages, as seen by an admin) sent with exactly `body`."""
    found: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 200}
        if cursor:
            params["cursor"] = cursor
        page = client.get("/api/v1/jobs", params=params).json()
        found += [job for job in page["items"] if job["kwargs"] == {**DEFAULTS, **body}]
        cursor = page["next_cursor"]
        if not cursor:
            return found


DEFAULTS = {"steps": 3, "step_seconds": 0.1, "fail_attempts": 0, "failure": "transient"}


def admin_key(owner: str) -> str:
    with db.session_scope() as session:
        return api_keys.create_key(session, owner, owner=owner, admin=True).plaintext


def post(client: httpx.Client, body: dict[str, Any], key: str | None) -> httpx.Response:
    headers = {HEADER: key} if key is not None else {}
    return client.post(PATH, json=body, headers=headers)


@pytest.fixture
def second_api(stack: Stack) -> Iterator[str]:
    """Another uvicorn process on the same database and Redis, as in a scaled deployment."""
    with extra_api(stack, "api2") as url:
        yield url


# --- the stampede: several client processes, two API processes ------------------------------


def _stampede(
    urls: list[str],
    api_key: str,
    idempotency_key: str,
    body: dict[str, Any],
    requests: int,
    index: int,
    barrier: Any,
    results: Any,
) -> None:
    """One client process: `requests` identical POSTs at once, spread over the API processes."""

    async def fire() -> list[tuple[int, str, str | None]]:
        headers = {"Authorization": f"Bearer {api_key}", HEADER: idempotency_key}
        limits = httpx.Limits(max_connections=requests, max_keepalive_connections=requests)
        async with httpx.AsyncClient(headers=headers, timeout=60, limits=limits) as client:
            barrier.wait(30)  # every process fires at the same moment
            responses = await asyncio.gather(
                *(
                    client.post(urls[(index + n) % len(urls)] + PATH, json=body)
                    for n in range(requests)
                )
            )
        return [(r.status_code, r.text, r.headers.get(REPLAYED)) for r in responses]

    try:
        results.put((index, asyncio.run(fire())))
    except BaseException as exc:  # reported to the test instead of dying silently
        results.put((index, repr(exc)))


def test_concurrent_identical_posts_from_many_processes_create_one_job(
    stack: Stack, admin: httpx.Client, second_api: str
) -> None:
    processes, per_process = 4, 25
    body = unique_body()
    key = f"stampede-{uuid.uuid4()}"
    urls = [stack.api_url, second_api]
    # A key of its own: the stampede must not meet a rate limit other tests used up.
    api_key = admin_key(f"stampede-{uuid.uuid4().hex[:8]}")
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(processes)
    results = ctx.Queue()
    clients = [
        ctx.Process(
            target=_stampede,
            args=(urls, api_key, key, body, per_process, index, barrier, results),
        )
        for index in range(processes)
    ]
    for client in clients:
        client.start()
    outcomes: list[tuple[int, str, str | None]] = []
    try:
        for _ in range(processes):
            index, got = results.get(timeout=120)
            assert isinstance(got, list), f"client process {index} failed: {got}"
            outcomes += got
    finally:
        for client in clients:
            client.join(30)
    assert len(outcomes) == processes * per_process

    statuses = Counter(status for status, _, _ in outcomes)
    if not set(statuses) <= {202, 409}:
        # Which error, and what the API processes logged about it.
        odd = {status: text for status, text, _ in outcomes if status not in (202, 409)}
        logs = "\n".join(path.read_text()[-4000:] for path in stack.tmp.glob("api*.log"))
        pytest.fail(f"statuses {dict(statuses)}; other answers {odd}\n{logs}")
    accepted = [
        (json.loads(text), replayed) for status, text, replayed in outcomes if status == 202
    ]
    job_ids = {payload["job_id"] for payload, _ in accepted}
    assert len(job_ids) == 1, job_ids
    # Exactly one response is the original; every other 202 says it is a replay.
    assert [replayed for _, replayed in accepted].count(None) == 1
    assert all(replayed in (None, "true") for _, replayed in accepted)
    conflicts = [json.loads(text) for status, text, _ in outcomes if status == 409]
    assert all("still being handled" in item["detail"] for item in conflicts)

    (job_id,) = job_ids
    ledger_jobs = jobs_with_kwargs(admin, body)
    assert [job["id"] for job in ledger_jobs] == [job_id]
    stack.wait_job(job_id, {"succeeded"})
    # Once settled, both API processes replay the same job.
    for url in urls:
        auth = {"Authorization": f"Bearer {api_key}"}
        with httpx.Client(base_url=url, headers=auth, timeout=30) as http:
            again = post(http, body, key)
            assert again.status_code == 202
            assert again.json()["job_id"] == job_id
            assert again.headers[REPLAYED] == "true"
    assert len(jobs_with_kwargs(admin, body)) == 1


# --- the rules one at a time ----------------------------------------------------------------


def test_replay_returns_the_same_response_with_the_replayed_header(
    stack: Stack, admin: httpx.Client
) -> None:
    body = unique_body()
    key = str(uuid.uuid4())
    first = post(admin, body, key)
    assert first.status_code == 202
    assert REPLAYED not in first.headers
    job_id = first.json()["job_id"]
    stack.wait_job(job_id, {"succeeded"})
    # Key order and spacing do not matter: the canonical JSON is hashed.
    reordered = json.dumps(dict(reversed(list(body.items()))), indent=2).encode()
    again = admin.post(
        PATH, content=reordered, headers={HEADER: key, "Content-Type": "application/json"}
    )
    assert again.status_code == 202
    assert again.content == first.content
    assert again.headers["content-type"] == first.headers["content-type"]
    assert again.headers[REPLAYED] == "true"
    # Rate-limit headers (when the limit is on) are the replay's own, sent once.
    limit_header = "x-ratelimit-remaining"
    expected = 1 if limit_header in first.headers else 0
    assert len(again.headers.get_list(limit_header)) == expected
    assert len(jobs_with_kwargs(admin, body)) == 1


def test_same_key_with_a_different_body_is_422(stack: Stack, admin: httpx.Client) -> None:
    body, other = unique_body(), unique_body()
    key = str(uuid.uuid4())
    assert post(admin, body, key).status_code == 202
    refused = post(admin, other, key)
    assert refused.status_code == 422
    assert "different request" in refused.json()["detail"]
    assert jobs_with_kwargs(admin, other) == []


def test_same_key_while_the_first_is_in_flight_is_409(stack: Stack, admin: httpx.Client) -> None:
    body = unique_body()
    key = str(uuid.uuid4())
    # Hold the key as a request that is still running would: an in-flight record of ours.
    with db.session_factory()() as session:
        claim = idempotency.begin(
            session,
            owner="ops",  # the owner of the stack's admin key
            key=key,
            method="POST",
            path=PATH,
            fingerprint=idempotency.request_hash("POST", PATH, json.dumps(body).encode()),
            ttl_seconds=3600,
        )
    assert claim.outcome is idempotency.Outcome.PROCEED
    assert claim.record_id is not None
    busy = post(admin, body, key)
    assert busy.status_code == 409
    assert busy.headers["retry-after"] == "1"
    assert "still being handled" in busy.json()["detail"]
    # A different body is refused for what it is, even while in flight.
    assert post(admin, unique_body(), key).status_code == 422
    assert jobs_with_kwargs(admin, body) == []
    # The first request failed and let the key go: a retry now runs.
    with db.session_factory()() as session:
        assert idempotency.release(session, claim.record_id)
    retried = post(admin, body, key)
    assert retried.status_code == 202
    assert REPLAYED not in retried.headers
    assert [job["id"] for job in jobs_with_kwargs(admin, body)] == [retried.json()["job_id"]]


def test_keys_are_independent_per_owner(stack: Stack, admin: httpx.Client) -> None:
    body = unique_body()
    key = str(uuid.uuid4())
    mine = post(admin, body, key)
    with stack.client(admin_key(f"other-{uuid.uuid4().hex[:8]}")) as other:
        theirs = post(other, body, key)
        assert theirs.status_code == 202
        assert REPLAYED not in theirs.headers
        assert theirs.json()["job_id"] != mine.json()["job_id"]
        assert post(other, body, key).json()["job_id"] == theirs.json()["job_id"]
    assert post(admin, body, key).json()["job_id"] == mine.json()["job_id"]
    assert len(jobs_with_kwargs(admin, body)) == 2


def test_an_expired_key_can_be_used_again(stack: Stack, admin: httpx.Client) -> None:
    body = unique_body()
    key = str(uuid.uuid4())
    first = post(admin, body, key).json()["job_id"]
    assert post(admin, body, key).headers[REPLAYED] == "true"
    with db.session_scope() as session:
        expired = session.execute(
            update(IdempotencyRecord)
            .where(IdempotencyRecord.owner == "ops", IdempotencyRecord.key == key)
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
        assert getattr(expired, "rowcount", 0) == 1
    fresh = post(admin, body, key)
    assert fresh.status_code == 202
    assert REPLAYED not in fresh.headers
    assert fresh.json()["job_id"] != first
    assert len(jobs_with_kwargs(admin, body)) == 2
    # And the new record is the one replayed from now on.
    assert post(admin, body, key).json()["job_id"] == fresh.json()["job_id"]


def test_malformed_keys_are_400_and_create_nothing(stack: Stack, admin: httpx.Client) -> None:
    body = unique_body()
    for key in ("", "k" * 256):
        response = post(admin, body, key)
        assert response.status_code == 400, response.text
    assert jobs_with_kwargs(admin, body) == []


def test_invalid_body_does_not_use_up_the_key(stack: Stack, admin: httpx.Client) -> None:
    key = str(uuid.uuid4())
    assert post(admin, {"steps": 0}, key).status_code == 422
    body = unique_body()
    accepted = post(admin, body, key)
    assert accepted.status_code == 202
    assert REPLAYED not in accepted.headers


def test_purge_expired_removes_only_expired_records(stack: Stack, admin: httpx.Client) -> None:
    live, dead = str(uuid.uuid4()), str(uuid.uuid4())
    assert post(admin, unique_body(), live).status_code == 202
    assert post(admin, unique_body(), dead).status_code == 202
    with db.session_scope() as session:
        session.execute(
            update(IdempotencyRecord)
            .where(IdempotencyRecord.key == dead)
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    with db.session_factory()() as session:
        assert idempotency.purge_expired(session, batch_size=1) >= 1
        remaining = {
            record.key
            for record in session.query(IdempotencyRecord).filter(
                IdempotencyRecord.key.in_([live, dead])
            )
        }
    assert remaining == {live}
