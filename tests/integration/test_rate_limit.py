"""Global rate limits: the GCRA script on a real Redis, a limit shared by four worker
processes, and the HTTP limit per API key."""

from __future__ import annotations

import json
import multiprocessing
import time
import uuid
from collections.abc import Iterator
from multiprocessing.synchronize import Barrier as ProcessBarrier

import httpx
import pytest
import redis
from sqlalchemy import select

from conveyor.core import db
from conveyor.core.jobs import Submission, submit
from conveyor.core.models import Job
from conveyor.core.rate_limit import Bucket, Decision, Rate, acquire, reserve, take_all
from conveyor.core.task import TICKET_GRACE
from tests.integration.conftest import Stack, extra_api, wait_for
from tests.integration.test_locks import start_worker_process

TASK = "tests.limits.rate_probe"
PROBE_RATE = 20.0  # RateProbe.rate, per second


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(redis_url, decode_responses=True)
    yield connection
    connection.close()


def test_gcra_script_decisions(client: redis.Redis) -> None:
    key = f"t-{uuid.uuid4().hex[:8]}"
    rate = Rate(limit=5, period=1.0, burst=2)  # one per 200 ms, two back to back
    t = 1_000_000.0  # the script's clock, injected

    def at(offset: float) -> tuple[bool, float]:
        decision = acquire(key, rate, client=client, at=t + offset)
        return decision.allowed, round(decision.retry_after, 6)

    assert at(0) == (True, 0)
    assert at(0) == (True, 0)
    assert at(0) == (False, 0.2)
    assert at(0.1) == (False, 0.1), "a denied call must not move the limit"
    assert at(0.2) == (True, 0)
    assert at(0.2) == (False, 0.2)
    assert at(5) == (True, 0), "an idle limit refills to its burst"
    assert acquire(key, rate, client=client, at=t + 5).remaining == 0

    # Reservations book evenly spaced slots up to the horizon, then deny.
    other = f"t-{uuid.uuid4().hex[:8]}"
    slots = [reserve(other, "10/s", horizon=0.35, client=client, at=t) for _ in range(6)]
    assert [s.allowed for s in slots] == [True, False, False, False, False, False]
    assert [s.reserved for s in slots] == [False, True, True, True, False, False]
    assert [round(s.retry_after, 6) for s in slots] == [0, 0.1, 0.2, 0.3, 0.05, 0.05]


def test_take_all_is_all_or_nothing(client: redis.Redis) -> None:
    provider, domain = (f"t-{uuid.uuid4().hex[:8]}" for _ in range(2))
    t = 2_000_000.0

    def take(offset: float) -> Decision:
        buckets = [Bucket(provider, "10/s", horizon=1.0), Bucket(domain, "2/s")]
        return take_all(buckets, client=client, at=t + offset)

    first = take(0)
    assert first.allowed
    # The domain is busy for 0.5 s: refused, and the provider's slot is not taken meanwhile.
    busy = take(0.05)
    assert (busy.allowed, busy.reserved, busy.refused_by) == (False, False, domain)
    assert round(busy.retry_after, 6) == 0.45
    booked = reserve(provider, "10/s", horizon=1.0, client=client, at=t + 0.05)
    assert round(booked.retry_after, 6) == 0.05  # the next slot after the first call's
    assert take(0.5).allowed
    # The provider is booked 0.2 s ahead, the domain is free: the call books both.
    for _ in range(2):
        reserve(provider, "10/s", horizon=1.0, client=client, at=t + 1.0)
    later = take(1.0)
    assert (later.allowed, later.reserved, round(later.retry_after, 6)) == (False, True, 0.2)
    assert take(1.0).refused_by == domain


def _hammer(
    redis_url: str,
    key: str,
    seconds: float,
    barrier: ProcessBarrier,
    out: multiprocessing.Queue[list[float]],
) -> None:
    connection = redis.Redis.from_url(redis_url, decode_responses=True)
    connection.ping()
    barrier.wait(timeout=60)
    allowed = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if acquire(key, "50/s burst 5", client=connection).allowed:
            allowed.append(time.time())
    out.put(allowed)


def test_one_limit_holds_across_processes(redis_url: str) -> None:
    key = f"t-{uuid.uuid4().hex[:8]}"
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(4)
    out: multiprocessing.Queue[list[float]] = context.Queue()
    seconds = 2.0
    workers = [
        context.Process(target=_hammer, args=(redis_url, key, seconds, barrier, out))
        for _ in range(4)
    ]
    for worker in workers:
        worker.start()
    results = [out.get(timeout=60) for _ in workers]
    for worker in workers:
        worker.join(timeout=10)
    stamps = sorted(stamp for allowed in results for stamp in allowed)
    span = stamps[-1] - stamps[0]
    # 50/s with a burst of 5, however many ask: at most 50 per second of the span the
    # admissions cover (+5 burst, +1 at the edge), and not far below it either.
    assert len(stamps) <= 50 * span + 5 + 1, (len(stamps), span)
    assert len(stamps) >= 0.9 * 50 * seconds, len(stamps)
    assert sum(1 for allowed in results if allowed) >= 2, "the processes should share it"


def _completions(stack: Stack, run: str) -> list[dict[str, float]]:
    connection = redis.Redis.from_url(stack.env["CONVEYOR_REDIS_URL"])
    return [json.loads(item) for item in connection.lrange(f"test:limits:rate:{run}", 0, -1)]


@pytest.mark.both_brokers
@pytest.mark.one_database  # the limiter lives in Redis
def test_rate_limited_task_shared_by_four_worker_processes(stack: Stack) -> None:
    missed = _rate_run(stack)
    if missed is not None:
        # A floor missed once may be the host (a VM's CPU taken by its neighbours); missed
        # twice, it is Conveyor. The ceilings were checked in full both times.
        again = _rate_run(stack)
        assert again is None, f"too slow twice: {missed}; then {again}"


def _rate_run(stack: Stack) -> str | None:
    """One run: asserts the ceilings; returns why the floor was missed."""
    run = uuid.uuid4().hex[:8]
    window = 10.0
    warm_up = 2.0
    count = int(PROBE_RATE * (window + warm_up + 2))
    extra = start_worker_process(stack, "default")  # 2 more processes: 4 in all
    try:
        ids = [submit(Submission(task_name=TASK, kwargs={"run": run})).id for _ in range(count)]
        wait_for(
            lambda: len(_completions(stack, run)) >= count,
            count / PROBE_RATE + 30,
            f"{count} rate-limited jobs to finish",
            interval=0.5,
        )
    finally:
        extra.stop()
    done = _completions(stack, run)
    times = sorted(item["t"] for item in done)
    start = times[0] + warm_up
    in_window = sum(1 for t in times if start <= t < start + window)
    expected = PROBE_RATE * window
    assert in_window <= 1.05 * expected, (in_window, expected)
    # Never above the rate in any second: burst 1, plus the slots a late job may still use
    # (TICKET_GRACE), plus one at each edge (completions jitter around their start).
    busiest = max(sum(1 for t in times if first <= t < first + 1) for first in times)
    assert busiest <= PROBE_RATE * (1 + TICKET_GRACE) + 2, busiest
    # Waiting spent nothing: no Celery retry, one attempt each in the ledger.
    assert {item["retries"] for item in done} == {0}
    with db.session_scope() as session:
        rows = session.scalars(select(Job).where(Job.id.in_(ids))).all()
    assert {row.state for row in rows} == {"succeeded"}
    assert {row.attempts for row in rows} == {1}
    # A floor that catches a limiter wasting its slots. How close the achieved rate comes to
    # the configured one is a speed figure, measured by bench/reliability.py, not here: on
    # a busy 2-core VM it varies from run to run (86-100% of the rate in the same hour).
    if in_window < 0.8 * expected:
        return f"{in_window} jobs in {window:.0f}s at {PROBE_RATE}/s, expected {expected:.0f}"
    return None


@pytest.mark.one_database  # the limiter lives in Redis
def test_http_limit_per_api_key(stack: Stack) -> None:
    per_minute = 5
    # With the failed-authentication limit on too, a key checked moments ago takes both
    # checks in one round trip (api/rate_limit.py admit_known_key): the same answers.
    limit = {
        "CONVEYOR_API_RATE_LIMIT_PER_MINUTE": str(per_minute),
        "CONVEYOR_API_AUTH_FAILURES_PER_MINUTE": "20",
    }
    with extra_api(stack, "api-limited", **limit) as base:
        busy = {"Authorization": f"Bearer {stack.key_for(f'busy-{uuid.uuid4().hex[:6]}')}"}
        calm = {"Authorization": f"Bearer {stack.key_for(f'calm-{uuid.uuid4().hex[:6]}')}"}
        with httpx.Client(base_url=base, timeout=10) as http:
            remaining = []
            for _ in range(per_minute):
                response = http.get("/api/v1/jobs", headers=busy)
                assert response.status_code == 200, response.text
                remaining.append(int(response.headers["x-ratelimit-remaining"]))
            assert remaining == list(range(per_minute - 1, -1, -1))
            over = http.get("/api/v1/jobs", headers=busy)
            assert over.status_code == 429
            retry_after = over.headers["retry-after"]
            assert retry_after.isdigit()
            assert 1 <= int(retry_after) <= 60 // per_minute
            assert "rate limit" in over.json()["detail"]
            assert http.get("/api/v1/jobs", headers=calm).status_code == 200
            for _ in range(per_minute + 2):
                assert http.get("/health/live").status_code == 200
            assert http.get("/metrics").status_code == 200
