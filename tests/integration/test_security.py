"""What a hostile client found, against the real API: open event streams per key, failed
authentications per address, out-of-range numbers, and the headers of every answer."""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis

from conveyor.api.event_hub import CLIENT_NAME
from conveyor.core import api_keys, db
from tests.integration.conftest import (
    REDIS_DB,
    Stack,
    api_answers,
    api_process,
    extra_api,
    submit_diagnostics,
    wait_for,
)

pytestmark = pytest.mark.integration

CAP = 4


@contextlib.contextmanager
def api_with(stack: Stack, name: str, **overrides: str) -> Iterator[tuple[str, int]]:
    """Another API process; its base URL and pid (which names its Redis connection)."""
    api, base_url = api_process(name, {**stack.env, **overrides}, stack.tmp)
    api.start()
    try:
        wait_for(lambda: api_answers(base_url), 30, f"the {name} API process to start")
        assert api.process is not None
        yield base_url, api.process.pid
    finally:
        api.stop()


def first_event(lines: Iterator[str]) -> tuple[str, dict[str, Any]]:
    event = ""
    for line in lines:
        if line.startswith("event: "):
            event = line.removeprefix("event: ")
        elif line.startswith("data: "):
            return event, json.loads(line.removeprefix("data: "))
    raise AssertionError("the stream ended before its first event")


def hub_connections(client: redis.Redis, pid: int) -> list[dict[str, Any]]:
    return [
        item
        for item in client.client_list()
        if item.get("name") == f"{CLIENT_NAME}-{pid}" and str(item.get("db")) == str(REDIS_DB)
    ]


def test_event_streams_are_capped_per_key_and_share_one_redis_connection(
    stack: Stack, redis_url: str
) -> None:
    with db.session_scope() as session:
        key = api_keys.create_key(session, "sse-probe", admin=True).plaintext
    headers = {"Authorization": f"Bearer {key}"}
    overrides = {"CONVEYOR_SSE_MAX_STREAMS_PER_KEY": str(CAP)}
    inspector = redis.Redis.from_url(redis_url, decode_responses=True)
    with (
        stack.client(key) as submitter,
        api_with(stack, "sse-cap", **overrides) as (base_url, pid),
        httpx.Client(base_url=base_url, headers=headers, timeout=30) as client,
        contextlib.ExitStack() as open_streams,
    ):
        # Long jobs (two run, the rest wait): streams stay open until they are cancelled.
        jobs = [submit_diagnostics(submitter, steps=1000, step_seconds=0.1) for _ in range(CAP + 1)]
        try:
            streams = {}
            for job_id in jobs[:CAP]:
                response = open_streams.enter_context(
                    client.stream("GET", f"/api/v1/jobs/{job_id}/events")
                )
                assert response.status_code == 200
                lines = response.iter_lines()
                assert first_event(lines)[1]["id"] == job_id
                streams[job_id] = lines

            refused = client.get(f"/api/v1/jobs/{jobs[CAP]}/events")
            assert refused.status_code == 429
            assert int(refused.headers["Retry-After"]) >= 1
            detail = refused.json()["detail"]
            assert f"{CAP} open event streams" in detail
            assert "CONVEYOR_SSE_MAX_STREAMS_PER_KEY" in detail

            # One pub/sub connection for all of them, subscribed to each job's channel.
            [hub] = hub_connections(inspector, pid)
            assert int(hub["sub"]) == CAP

            # Events still arrive: a cancelled job's stream says so and ends.
            assert submitter.delete(f"/api/v1/jobs/{jobs[0]}").status_code == 200
            events = [first_event(streams[jobs[0]])]
            with contextlib.suppress(AssertionError):
                while events[-1][0] != "cancelled":
                    events.append(first_event(streams[jobs[0]]))
            assert events[-1][0] == "cancelled"
            assert events[-1][1]["state"] == "cancelled"

            # ...and its place is free again, for the stream that was refused.
            def opens(job_id: str) -> httpx.Response | None:
                response = open_streams.enter_context(
                    client.stream("GET", f"/api/v1/jobs/{job_id}/events")
                )
                return response if response.status_code == 200 else None

            wait_for(lambda: opens(jobs[CAP]), 10, "a place after a stream ended")
            assert client.get(f"/api/v1/jobs/{jobs[1]}/events").status_code == 429
        finally:
            for job_id in jobs:
                submitter.delete(f"/api/v1/jobs/{job_id}")
        open_streams.close()  # the client goes away: places and subscriptions are given back
        wait_for(
            lambda: [int(item["sub"]) for item in hub_connections(inspector, pid)] == [0],
            10,
            "every channel to be unsubscribed",
        )
        with db.session_scope() as session:
            # A fresh key, so the probe's streams cannot have left places behind.
            other = api_keys.create_key(session, "sse-probe-2", admin=True).plaintext
        for _ in range(CAP + 2):  # more streams than the cap, one after another
            finished = httpx.get(
                f"{base_url}/api/v1/jobs/{jobs[0]}/events",
                headers={"Authorization": f"Bearer {other}"},
                timeout=30,
            )
            assert finished.status_code == 200
            assert "event: cancelled" in finished.text
    inspector.close()


@pytest.mark.one_database  # the throttle lives in Redis
def test_failed_authentications_are_throttled_per_address(stack: Stack) -> None:
    good = stack.key_for("auth-probe")
    attacker = {"X-Forwarded-For": f"203.0.113.{uuid.uuid4().int % 250 + 1}"}
    bystander = {"X-Forwarded-For": "198.51.100.7"}
    limits = {
        "CONVEYOR_API_AUTH_FAILURES_PER_MINUTE": "20",
        # On as well: a key checked already then takes both checks in one round trip.
        "CONVEYOR_API_RATE_LIMIT_PER_MINUTE": "1000",
    }
    with extra_api(stack, "auth-limit", **limits) as base_url:

        def get(key: str, origin: dict[str, str]) -> httpx.Response:
            headers = {"Authorization": f"Bearer {key}", **origin}
            return httpx.get(f"{base_url}/api/v1/jobs", headers=headers, timeout=10)

        started = time.monotonic()
        refused = 0
        while (blocked := get(f"cvk_0000deadbeef_guess{refused}", attacker)).status_code == 401:
            refused += 1
            assert refused <= 60, "never throttled"
        assert blocked.status_code == 429
        # A burst of 20, then one more for every 3 s the burst took.
        assert 20 <= refused <= 21 + (time.monotonic() - started) / 3
        wait = int(blocked.headers["Retry-After"])
        assert 1 <= wait <= 3  # 20 a minute: one more every 3 s
        assert "failed API-key authentications" in blocked.json()["detail"]
        # While blocked, even the right key is not confirmed; other addresses go on.
        assert get(good, attacker).status_code == 429
        assert get(good, bystander).status_code == 200
        # Now checked and kept by the API process: still refused from the blocked address.
        assert get(good, attacker).status_code == 429
        time.sleep(wait + 0.2)
        assert get(good, attacker).status_code == 200


@pytest.mark.parametrize(
    ("path", "param"),
    [
        ("/api/v1/email-suppressions", "offset"),
        ("/api/v1/dead-letters", "offset"),
        ("/api/v1/emails/batch/nope?recipients=true", "offset"),
        ("/api/v1/jobs", "limit"),
    ],
)
def test_numbers_beyond_a_bigint_are_422_not_500(
    stack: Stack, admin: httpx.Client, path: str, param: str
) -> None:
    response = admin.get(path, params={param: 2**63})
    assert response.status_code == 422, response.text
    assert response.json()["detail"].startswith(f"query.{param}: ")


def test_security_headers_on_the_real_api_and_hsts_only_over_https(
    stack: Stack, admin: httpx.Client
) -> None:
    plain = admin.get("/api/v1/jobs")
    assert plain.headers["x-content-type-options"] == "nosniff"
    assert plain.headers["x-frame-options"] == "DENY"
    assert plain.headers["referrer-policy"] == "no-referrer"
    assert "strict-transport-security" not in plain.headers
    # uvicorn trusts X-Forwarded-Proto from 127.0.0.1 (a TLS-terminating proxy there).
    secure = admin.get("/api/v1/jobs", headers={"X-Forwarded-Proto": "https"})
    assert secure.headers["strict-transport-security"].startswith("max-age=")
    docs = admin.get("/docs")
    assert "https://cdn.jsdelivr.net" in docs.headers["content-security-policy"]


@pytest.mark.one_database  # the cache is the API process's
def test_a_revoked_key_is_refused_within_the_key_cache_time(stack: Stack) -> None:
    """Each API process trusts a key it checked for CONVEYOR_API_KEY_CACHE_SECONDS."""
    with db.session_scope() as session:
        made = api_keys.create_key(session, "cached", owner=f"cache-{uuid.uuid4().hex[:6]}")
    headers = {"Authorization": f"Bearer {made.plaintext}"}
    with (
        extra_api(stack, "api-cache-long", CONVEYOR_API_KEY_CACHE_SECONDS="120") as long_url,
        extra_api(stack, "api-cache-short", CONVEYOR_API_KEY_CACHE_SECONDS="1") as short_url,
        httpx.Client(headers=headers, timeout=10) as client,
    ):
        for url in (long_url, short_url):
            assert client.get(f"{url}/api/v1/jobs").status_code == 200
        with db.session_scope() as session:
            api_keys.revoke(session, made.record.id)
        # The process that checked it moments ago still trusts it: no lookup per request...
        assert client.get(f"{long_url}/api/v1/jobs").status_code == 200
        # ...and once its cache time has passed, the revocation holds.
        wait_for(
            lambda: client.get(f"{short_url}/api/v1/jobs").status_code == 401,
            15,
            "the revoked key to be refused",
            interval=0.2,
        )
        assert client.get(f"{stack.api_url}/api/v1/jobs").status_code == 401  # never cached
