"""Faults injected into a running system; each ends with count in == count out: every
accepted job in exactly one terminal state, none run to success twice."""

from __future__ import annotations

import threading
import time
from collections import Counter

import httpx
import psycopg
import pytest
from sqlalchemy import text

from tests.faults.conftest import FaultStack, PrivateRedis, elapsed_since, submit
from tests.faults.receiver import Receiver
from tests.integration.conftest import wait_for

pytestmark = pytest.mark.faults


def accepted(stack: FaultStack, count: int, **body: object) -> list[str]:
    with stack.client() as client:
        responses = [submit(client, **body) for _ in range(count)]
    assert all(response.status_code == 202 for response in responses), responses[0].text
    return [response.json()["job_id"] for response in responses]


def wait_started(stack: FaultStack, job_ids: list[str], at_least: int) -> None:
    def started() -> bool:
        states = stack.states(job_ids)
        return sum(state == "started" for state, _ in states.values()) >= at_least

    wait_for(started, 60, f"{at_least} jobs to start", 0.2)


def test_worker_main_process_killed_mid_batch(fault_stack: FaultStack) -> None:
    jobs = accepted(fault_stack, 12, steps=4, step_seconds=0.25)
    wait_started(fault_stack, jobs, 2)
    fault_stack.processes["worker"].kill_hard()  # main process and pool: a host lost
    killed = time.monotonic()
    fault_stack.start_worker("worker-2")
    states = fault_stack.wait_all_terminal(jobs, 90)
    recovered = elapsed_since(killed)
    assert Counter(state for state, _ in states.values()) == {"succeeded": len(jobs)}
    rerun = sum(attempts == 2 for _, attempts in states.values())
    assert rerun >= 2, states  # the killed host's jobs ran again
    print(f"worker killed: {len(jobs)} of {len(jobs)} succeeded, {rerun} rerun, {recovered}s")


def test_redis_restarted_with_jobs_running(
    fault_stack: FaultStack, private_redis: PrivateRedis
) -> None:
    jobs = accepted(fault_stack, 8, steps=8, step_seconds=0.25)
    wait_started(fault_stack, jobs, 2)
    private_redis.stop()  # append-only file written: queued jobs survive the restart
    time.sleep(3)
    private_redis.start()
    restarted = time.monotonic()
    states = fault_stack.wait_all_terminal(jobs, 120)
    assert Counter(state for state, _ in states.values()) == {"succeeded": len(jobs)}
    print(f"redis restarted: {len(jobs)} of {len(jobs)} succeeded, {elapsed_since(restarted)}s")


def submit_honouring_retry_after(client: httpx.Client) -> httpx.Response:
    """As a well-behaved client does: wait as long as Retry-After says, then try again."""
    deadline = time.monotonic() + 30
    while True:
        response = submit(client, steps=1, step_seconds=0)
        if response.status_code != 503 or time.monotonic() > deadline:
            return response
        time.sleep(float(response.headers.get("retry-after", "1")))


def test_redis_frozen_during_submits(fault_stack: FaultStack, private_redis: PrivateRedis) -> None:
    answers: list[tuple[int, float, str | None]] = []
    with fault_stack.client() as client:
        private_redis.freeze()
        try:
            frozen_until = time.monotonic() + 8
            while time.monotonic() < frozen_until:
                began = time.monotonic()
                response = submit(client, steps=1, step_seconds=0)
                answers.append(
                    (
                        response.status_code,
                        time.monotonic() - began,
                        response.headers.get("retry-after"),
                    )
                )
                ready = client.get("/health/ready")
                assert ready.status_code == 503, ready.text
        finally:
            private_redis.thaw()
        after = [submit_honouring_retry_after(client) for _ in range(3)]
    slowest = max(seconds for _, seconds, _ in answers)
    assert {status for status, _, _ in answers} == {503}, answers
    assert all(retry is not None and 1 <= int(retry) <= 5 for _, _, retry in answers)
    assert slowest < 6, f"a submit was held {slowest:.1f}s while Redis was frozen"
    assert all(response.status_code == 202 for response in after)
    jobs = [response.json()["job_id"] for response in after]
    states = fault_stack.wait_all_terminal(jobs, 60)
    assert Counter(state for state, _ in states.values()) == {"succeeded": len(jobs)}
    # The refused ones are recorded as failed or not at all, never left queued for ever.
    with fault_stack.database.connect() as connection:
        stuck = connection.execute(
            text(
                "SELECT count(*) FROM conveyor_jobs"
                " WHERE state IN ('queued', 'started', 'retrying')"
            )
        ).scalar_one()
    assert stuck == 0
    print(f"redis frozen 8s: {len(answers)} submits, all 503, slowest {slowest:.1f}s")


def test_postgres_backends_terminated_while_jobs_finish(fault_stack: FaultStack) -> None:
    """Every job ends once and every owned ending is told once (one webhook delivery each),
    while the database drops connections under the workers every 0.3 s."""
    receiver = Receiver()
    with fault_stack.client() as client:
        created = client.post(
            "/api/v1/webhook-endpoints",
            json={"url": receiver.url, "events": ["job.succeeded", "job.dead"]},
        )
        assert created.status_code == 201, created.text
    database = fault_stack.database.url.database
    stop = threading.Event()

    def terminate() -> None:
        with psycopg.connect(
            "postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True
        ) as admin:
            while not stop.wait(0.3):
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = %s AND pid <> pg_backend_pid()",
                    (database,),
                )

    jobs = accepted(fault_stack, 20, steps=2, step_seconds=0.2)
    killer = threading.Thread(target=terminate, daemon=True)
    killer.start()
    try:
        time.sleep(8)
    finally:
        stop.set()
        killer.join()
    states = fault_stack.wait_all_terminal(jobs, 120)
    assert Counter(state for state, _ in states.values()) == {"succeeded": len(jobs)}

    def told() -> bool:
        return set(jobs) <= receiver.job_ids()

    wait_for(told, 90, "one webhook per job", 0.5)
    with fault_stack.database.connect() as connection:
        per_job = connection.execute(
            text(
                "SELECT payload->'data'->>'id' AS job, count(*) FROM conveyor_webhook_deliveries "
                "WHERE event_type = 'job.succeeded' GROUP BY 1"
            )
        ).all()
        pending = connection.execute(
            text("SELECT count(*) FROM conveyor_jobs WHERE events_pending")
        ).scalar_one()
    assert {job: count for job, count in per_job if job in jobs} == dict.fromkeys(jobs, 1)
    assert pending == 0
    receiver.close()
    print(f"postgres backends terminated: {len(jobs)} jobs, {len(jobs)} events, once each")


def test_the_api_answers_while_the_worker_is_gone(fault_stack: FaultStack) -> None:
    fault_stack.processes["worker"].stop()
    with fault_stack.client() as client:
        assert client.get("/health/ready").status_code == 200
        assert client.get("/health/workers").status_code == 503
        assert submit(client, steps=1).status_code == 202
    assert httpx.get(f"{fault_stack.api_url}/health/live", timeout=5).status_code == 200
