"""Payments per second end to end: API → worker → sandbox gateway → succeeded.

    .venv/bin/python bench/payments.py [--payments N] [--clients C] [--concurrency W]

Runs on PostgreSQL (a fresh database) and Redis (BENCH_REDIS_URL, default DB 10, flushed),
with one API process, one worker of W processes and the sandbox gateway, each its own
process. Two scenarios of N payments each, sent by C concurrent clients:

  baseline  every payment a card that succeeds at once
  faults    1% of the requests sent twice with the same Idempotency-Key (a client retry),
            5% of the payments on the sandbox's "times out" card: the gateway charges, then
            answers after 2 s while the worker gives up after 1 s, so only the status check
            on the next attempt can settle them

Time to `succeeded` is read from the database (settled_at - created_at of every payment),
so measuring adds no polling load. The duplicate-charge count comes from the gateway: every
charge it made under a key it had already charged (must be 0), and it must hold exactly N
charges for N payments.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import redis

from _common import free_port, percentile, tail

PYTHON = sys.executable
PG_ADMIN = os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/10")
SUCCEEDS = "4242424242424242"
TIMES_OUT = "4000000000006975"
_children: list[subprocess.Popen[bytes]] = []


def spawn(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        proc = subprocess.Popen(
            argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    _children.append(proc)
    return proc


def stop_all() -> None:
    for proc in _children:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in _children:
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    _children.clear()


def wait_http(url: str, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1).status_code == 200:
                return
        time.sleep(0.2)
    raise SystemExit(f"{what} did not start")


@dataclass
class Run:
    name: str
    payments: int
    requests: int
    seconds: float
    latencies: list[float]
    charges: int
    duplicate_charges: int
    timeouts: int
    duplicates_sent: int

    @property
    def rate(self) -> float:
        return self.payments / self.seconds

    def line(self) -> str:
        lat = sorted(self.latencies)
        return (
            f"{self.name:9s} {self.payments} payments ({self.requests} requests, "
            f"{self.duplicates_sent} duplicates, {self.timeouts} timeouts): "
            f"{self.rate:6.1f}/s, to succeeded p50 {percentile(lat, 0.5) * 1000:6.0f} ms, "
            f"p99 {percentile(lat, 0.99) * 1000:6.0f} ms; gateway charges {self.charges}, "
            f"duplicate charges {self.duplicate_charges}"
        )


async def send(
    api: str, key: str, count: int, clients: int, dup_share: float, timeout_share: float
) -> tuple[int, int, int]:
    """POST `count` payments; returns (requests sent, duplicates sent, timeout cards)."""
    rng = random.Random(7)
    plan = []
    for n in range(count):
        card = TIMES_OUT if rng.random() < timeout_share else SUCCEEDS
        plan.append((n, card, rng.random() < dup_share))
    queue: asyncio.Queue[tuple[int, str, bool]] = asyncio.Queue()
    for item in plan:
        queue.put_nowait(item)
    sent = 0
    headers = {"Authorization": f"Bearer {key}"}

    async def client() -> None:
        nonlocal sent
        async with httpx.AsyncClient(base_url=api, headers=headers, timeout=60) as http:
            while not queue.empty():
                n, card, twice = queue.get_nowait()
                body = {"amount": 1000 + n, "currency": "USD", "customer_id": f"cus_{n}",
                        "payment_method": card}  # fmt: skip
                idem = {"Idempotency-Key": str(uuid.uuid4())}
                for _ in range(2 if twice else 1):
                    response = await http.post("/api/v1/payments", json=body, headers=idem)
                    sent += 1
                    if response.status_code not in (202, 409):
                        raise SystemExit(f"POST answered {response.status_code}: {response.text}")

    await asyncio.gather(*(client() for _ in range(clients)))
    return sent, sum(1 for p in plan if p[2]), sum(1 for p in plan if p[1] == TIMES_OUT)


def scenario(
    name: str, db_url: str, api: str, gateway: str, key: str, count: int, clients: int,
    dup_share: float, timeout_share: float,
) -> Run:  # fmt: skip
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("DELETE FROM conveyor_payment_balance_entries")
        conn.execute("DELETE FROM conveyor_payments")
    before = httpx.get(f"{gateway}/stats").json()
    requests, dups, timeouts = asyncio.run(send(api, key, count, clients, dup_share, timeout_share))
    deadline = time.monotonic() + 300
    with psycopg.connect(db_url, autocommit=True) as conn:
        while True:
            row = conn.execute(
                "SELECT count(*) FILTER (WHERE state = 'succeeded'), count(*)"
                " FROM conveyor_payments"
            ).fetchone()
            assert row is not None
            if row[0] >= count:
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"{name}: only {row[0]} of {row[1]} payments succeeded")
            time.sleep(0.2)
        rows = conn.execute(
            "SELECT created_at, settled_at FROM conveyor_payments WHERE state = 'succeeded'"
        ).fetchall()
        total = conn.execute("SELECT count(*) FROM conveyor_payments").fetchone()
    if total is None or total[0] != count:
        raise SystemExit(f"{name}: {total} payments for {count} distinct requests")
    after = httpx.get(f"{gateway}/stats").json()
    first = min(created for created, _ in rows)
    last = max(settled for _, settled in rows)
    return Run(
        name=name,
        payments=count,
        requests=requests,
        seconds=(last - first).total_seconds(),
        latencies=[(settled - created).total_seconds() for created, settled in rows],
        charges=after["charges"] - before["charges"],
        duplicate_charges=after["duplicate_charges"],
        timeouts=timeouts,
        duplicates_sent=dups,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--payments", type=int, default=600)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-payments-"))
    name = f"conveyor_bench_payments_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    db_url = PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    redis.Redis.from_url(REDIS_URL).flushdb()
    gateway_port, api_port = free_port(), free_port()
    gateway = f"http://127.0.0.1:{gateway_port}"
    api = f"http://127.0.0.1:{api_port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    env.update(
        CONVEYOR_DATABASE_URL=db_url,
        CONVEYOR_REDIS_URL=REDIS_URL,
        CONVEYOR_DATA_DIR=str(work / "data"),
        CONVEYOR_LOG_LEVEL="WARNING",
        CONVEYOR_LOG_JSON="false",
        CONVEYOR_API_RATE_LIMIT_PER_MINUTE="0",
        CONVEYOR_PAYMENTS_GATEWAY_URL=gateway,
        CONVEYOR_PAYMENTS_GATEWAY_TIMEOUT_SECONDS="1",
        CONVEYOR_PAYMENTS_BACKOFF_MAX_SECONDS="1",
        CONVEYOR_SANDBOX_GATEWAY_PORT=str(gateway_port),
        CONVEYOR_SANDBOX_SLOW_SECONDS="2",
    )
    os.environ.update({k: v for k, v in env.items() if k.startswith("CONVEYOR_")})
    from conveyor.core import api_keys, db
    from conveyor.core.migrate import upgrade
    from conveyor.core.settings import get_settings

    get_settings.cache_clear()
    upgrade(get_settings())
    with db.session_scope() as session:
        key = api_keys.create_key(session, "bench", owner="bench").plaintext
    try:
        spawn([PYTHON, "-m", "conveyor.workloads.payments.sandbox"], env, work / "sandbox.log")
        spawn(
            [PYTHON, "-m", "uvicorn", "--factory", "conveyor.api.app:create_app",
             "--port", str(api_port), "--no-access-log", "--log-level", "warning"],
            env, work / "api.log",
        )  # fmt: skip
        worker_log = work / "worker.log"
        spawn(
            [PYTHON, "-m", "celery", "-A", "conveyor.worker", "worker", "-Q",
             "payments,webhooks,default", "-c", str(args.concurrency), "--without-gossip",
             "--without-mingle", "--loglevel", "WARNING"],
            env, worker_log,
        )  # fmt: skip
        wait_http(f"{gateway}/health", "the sandbox gateway")
        wait_http(f"{api}/health/live", "the API")
        runs = [
            scenario("baseline", db_url, api, gateway, key, args.payments, args.clients, 0, 0),
            scenario("faults", db_url, api, gateway, key, args.payments, args.clients, 0.01, 0.05),
        ]
    except BaseException:
        print(tail(worker_log))
        raise
    finally:
        stop_all()
        db.dispose_all()
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    print(f"payments end to end, PostgreSQL, worker -c {args.concurrency}, {args.clients} clients")
    for run in runs:
        print("  " + run.line())
    base, faults = runs
    p50 = statistics.median(faults.latencies) / statistics.median(base.latencies)
    print(
        f"  faults / baseline: throughput {faults.rate / base.rate:.2f}x, p50 {p50:.2f}x; "
        f"duplicate charges {faults.duplicate_charges}"
    )
    return 0 if all(run.duplicate_charges == 0 for run in runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
