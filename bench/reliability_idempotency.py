"""Overhead of the Idempotency-Key layer on POST /api/v1/diagnostics/jobs.

    .venv/bin/python bench/reliability_idempotency.py [--requests N] [--concurrent-requests M]

Starts uvicorn (conveyor.api.app:create_app) on loopback with a PostgreSQL ledger in a fresh
database and Redis DB 10 (flushed before and after; no worker runs, the queued messages are
dropped). Then, from this process:

  1. sequential: N POSTs one after another on one keep-alive connection, alternating
     blocks without the header and with a fresh Idempotency-Key per request;
  2. concurrent: M POSTs per mode from --concurrency clients at once, modes alternating.

A request with a key costs one INSERT (the claim) and one UPDATE (the stored response), each
its own commit, on top of the job's own ledger row and message. Prints p50/p99 per mode and
the ratios with/without; checks every answer was a 202 and the ledger got one job per request.
Bounded counts, loopback only; stops by itself (a hard deadline kills it after 110 s).
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import redis

from _common import free_port, percentile, tail

PATH = "/api/v1/diagnostics/jobs"
BODY = {"steps": 1, "step_seconds": 0}
HEADER = "Idempotency-Key"
DEADLINE_SECONDS = 110
BLOCK = 50  # sequential requests per mode before switching: drift hits both modes alike

_children: list[subprocess.Popen[bytes]] = []


# --- processes -------------------------------------------------------------------------------


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM (uvicorn's graceful stop), then SIGKILL to the group this script started."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    if proc in _children:
        _children.remove(proc)


def _cleanup() -> None:
    for proc in list(_children):
        with contextlib.suppress(Exception):
            stop(proc)


def _on_signal(signum: int, _frame: Any) -> None:
    if signum == signal.SIGALRM:
        print(f"\nABORTED: over the {DEADLINE_SECONDS}s deadline", file=sys.stderr)
    _cleanup()
    raise SystemExit(128 + signum)


def start_api(env: dict[str, str], log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    argv = [
        sys.executable, "-m", "uvicorn", "--factory", "conveyor.api.app:create_app",
        "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", "--no-access-log",
    ]  # fmt: skip
    with log.open("ab") as out:
        proc = subprocess.Popen(
            argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    _children.append(proc)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"uvicorn exited with {proc.returncode}:\n{tail(log)}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/health/live", timeout=1).status_code == 200:
                return proc, url
        if time.monotonic() > deadline:
            raise RuntimeError(f"the API did not answer in 30s:\n{tail(log)}")
        time.sleep(0.1)


# --- measuring -------------------------------------------------------------------------------


@dataclass
class Sample:
    latencies: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    replays: int = 0
    wall: float = 0.0

    def add(self, seconds: float, response: httpx.Response) -> None:
        self.latencies.append(seconds)
        self.statuses[response.status_code] += 1
        if response.headers.get("Idempotent-Replayed"):
            self.replays += 1

    def ms(self, fraction: float) -> float:
        return 1000 * percentile(sorted(self.latencies), fraction)

    @property
    def mean_ms(self) -> float:
        return 1000 * statistics.fmean(self.latencies) if self.latencies else float("nan")

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.wall if self.wall else float("nan")


def headers_for(with_key: bool) -> dict[str, str]:
    return {HEADER: str(uuid.uuid4())} if with_key else {}


def sequential(url: str, api_key: str, requests: int) -> dict[bool, Sample]:
    samples = {False: Sample(), True: Sample()}
    auth = {"Authorization": f"Bearer {api_key}"}
    with httpx.Client(base_url=url, headers=auth, timeout=30) as client:
        for with_key in (False, True):  # warm-up, not measured
            for _ in range(20):
                client.post(PATH, json=BODY, headers=headers_for(with_key))
        done = 0
        while done < requests:
            for with_key in (False, True):
                sample = samples[with_key]
                started = time.perf_counter()
                for _ in range(min(BLOCK, requests - done)):
                    before = time.perf_counter()
                    response = client.post(PATH, json=BODY, headers=headers_for(with_key))
                    sample.add(time.perf_counter() - before, response)
                sample.wall += time.perf_counter() - started
            done += BLOCK
    return samples


async def _concurrent_round(
    client: httpx.AsyncClient, sample: Sample, with_key: bool, requests: int, concurrency: int
) -> None:
    remaining = requests

    async def one_client() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            before = time.perf_counter()
            response = await client.post(PATH, json=BODY, headers=headers_for(with_key))
            sample.add(time.perf_counter() - before, response)

    started = time.perf_counter()
    await asyncio.gather(*(one_client() for _ in range(concurrency)))
    sample.wall += time.perf_counter() - started


async def concurrent(
    url: str, api_key: str, requests: int, concurrency: int, rounds: int
) -> dict[bool, Sample]:
    samples = {False: Sample(), True: Sample()}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    auth = {"Authorization": f"Bearer {api_key}"}
    async with httpx.AsyncClient(base_url=url, headers=auth, timeout=30, limits=limits) as client:
        for with_key in (False, True):  # warm-up: open the connections, fill the pools
            await _concurrent_round(client, Sample(), with_key, 2 * concurrency, concurrency)
        per_round = max(1, requests // rounds)
        for _ in range(rounds):
            for with_key in (False, True):
                await _concurrent_round(client, samples[with_key], with_key, per_round, concurrency)
    return samples


# --- report ----------------------------------------------------------------------------------


def report(title: str, samples: dict[bool, Sample]) -> list[str]:
    problems = []
    print(f"\n  {title}")
    print(f"  {'':<22}{'requests':>9}{'p50 ms':>9}{'p99 ms':>9}{'mean ms':>9}{'req/s':>9}")
    for with_key, label in ((False, "without header"), (True, "with Idempotency-Key")):
        s = samples[with_key]
        print(
            f"  {label:<22}{len(s.latencies):>9}{s.ms(0.50):>9.2f}{s.ms(0.99):>9.2f}"
            f"{s.mean_ms:>9.2f}{s.rate:>9.0f}"
        )
        if set(s.statuses) != {202}:
            problems.append(f"{title}, {label}: statuses {dict(s.statuses)}")
        if s.replays:
            problems.append(f"{title}, {label}: {s.replays} replays with fresh keys")
    base, keyed = samples[False], samples[True]
    print(
        f"  ratio with/without:   p50 {keyed.ms(0.5) / base.ms(0.5):.2f}x   "
        f"p99 {keyed.ms(0.99) / base.ms(0.99):.2f}x   "
        f"throughput {keyed.rate / base.rate:.2f}x"
    )
    return problems


def versions() -> str:
    from importlib.metadata import version

    names = ("fastapi", "uvicorn", "SQLAlchemy", "psycopg", "redis")
    return ", ".join(f"{name} {version(name)}" for name in names)


def pg_count(url: str, table: str) -> int:
    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()  # noqa: S608 - fixed names
        return int(row[0]) if row else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=600, help="sequential, per mode")
    parser.add_argument("--concurrent-requests", type=int, default=1200, help="per mode")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=4, help="concurrent rounds per mode")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379", help="Redis server")
    parser.add_argument("--redis-db", type=int, default=10)
    parser.add_argument(
        "--postgres",
        default="postgresql://postgres@127.0.0.1:5432/test",
        help="an existing database, to connect to for CREATE DATABASE",
    )
    parser.add_argument("--database", default="conveyor_bench_idempotency")
    args = parser.parse_args()
    limits_ok = 1 <= args.requests <= 5000 and 1 <= args.concurrent_requests <= 20000
    if not limits_ok or not 1 <= args.concurrency <= 128 or not 1 <= args.rounds <= 20:
        parser.error("counts out of bounds (requests <= 5000, concurrent <= 20000, C <= 128)")
    if not args.redis.startswith(("redis://127.0.0.1", "redis://localhost")):
        parser.error("the benchmark only talks to a loopback Redis")

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGALRM, _on_signal)
    signal.alarm(DEADLINE_SECONDS)
    atexit.register(_cleanup)

    redis_url = f"{args.redis.rstrip('/')}/{args.redis_db}"
    pg_url = f"{args.postgres.rsplit('/', 1)[0]}/{args.database}"
    work_dir = Path(tempfile.mkdtemp(prefix="conveyor-bench-idem-"))
    hot = redis.Redis.from_url(redis_url, socket_timeout=10)
    hot.flushdb()
    with psycopg.connect(args.postgres, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{args.database}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{args.database}"')

    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    env.update(
        CONVEYOR_REDIS_URL=redis_url,
        CONVEYOR_DATABASE_URL=pg_url,
        CONVEYOR_DATA_DIR=str(work_dir / "data"),
        CONVEYOR_LOG_LEVEL="WARNING",
        CONVEYOR_LOG_JSON="false",
        # The per-key request limit would otherwise throttle a benchmark.
        CONVEYOR_API_RATE_LIMIT_PER_MINUTE="0",
    )
    os.environ.update({k: v for k, v in env.items() if k.startswith("CONVEYOR_")})
    from conveyor.core import api_keys
    from conveyor.core.db import dispose_all, session_scope
    from conveyor.core.migrate import upgrade
    from conveyor.core.settings import get_settings

    get_settings.cache_clear()
    upgrade(get_settings())
    with session_scope() as session:
        api_key = api_keys.create_key(session, "bench", owner="bench", admin=True).plaintext
    dispose_all()

    print("Conveyor idempotency-key overhead on POST /api/v1/diagnostics/jobs")
    print(f"  python {platform.python_version()}; {versions()}; {os.cpu_count()} CPUs")
    print(f"  ledger {pg_url}; Redis {redis_url}; one uvicorn process, no worker")
    problems: list[str] = []
    api, url = start_api(env, work_dir / "api.log")
    try:
        seq = sequential(url, api_key, args.requests)
        problems += report(
            f"sequential: one client, {args.requests} requests per mode in blocks of {BLOCK}",
            seq,
        )
        conc = asyncio.run(
            concurrent(url, api_key, args.concurrent_requests, args.concurrency, args.rounds)
        )
        problems += report(
            f"concurrent: {args.concurrency} clients, {args.concurrent_requests} requests "
            f"per mode in {args.rounds} alternating rounds",
            conc,
        )
    finally:
        stop(api)
        hot.flushdb()  # no worker will run the queued messages
    jobs, keys = pg_count(pg_url, "conveyor_jobs"), pg_count(pg_url, "conveyor_idempotency_keys")
    keyed = len(seq[True].latencies) + len(conc[True].latencies)
    print(f"\n  ledger: {jobs} jobs, {keys} idempotency records ({keyed} measured keyed POSTs)")
    if keys < keyed:
        problems.append(f"only {keys} idempotency records for {keyed} keyed requests")
    signal.alarm(0)
    if problems:
        print("\n  PROBLEMS:\n    " + "\n    ".join(problems))
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
