"""Cost and accuracy of Conveyor's limits: the rate limiter, and unique-job dispatch.

    .venv/bin/python bench/reliability_limits.py [--calls N] [--seconds S] [--processes P]
                                                 [--dispatches D] [--sqlite]

Loopback Redis DB 11 (flushed before and after) and a PostgreSQL ledger in a fresh database
(or SQLite in a temporary directory with --sqlite). No worker runs: queued messages are
dropped at the end.

  1. acquire(): microseconds per call, one caller on one connection, N calls; the baseline is
     a plain PING on the same connection (one round trip that does nothing), and a SET.
     The limiter is one EVALSHA of a GCRA script: one round trip, like the PING.
  2. Accuracy: P processes share one key for S seconds, at 50/s, 200/s and 1000/s, three ways:
     calling acquire() back to back with burst 1 (strict spacing), the same with a burst of
     rate/20 (50 ms of tolerance), and reserve() + sleep, which is how a waiting task uses the
     limiter. Admitted per second against the configured rate, the busiest 100 ms (ideal:
     rate/10 + burst - 1) and the calls made. Admitting more than rate x S + burst is a bug;
     admitting less is the cost of strictness: with burst 1, time between a slot opening and
     the next caller arriving is lost (GCRA never lets a late caller catch up), which a burst
     tolerance or booked slots recover.
  3. Unique dispatch: conveyor.core.jobs.submit() with and without a unique key (a fresh key
     each, so every dispatch claims), and a dispatch of a key already queued (answered with
     the existing job: no row, no message). D dispatches per mode in alternating blocks;
     median and p99 per dispatch, ratios to the plain dispatch.

Bounded counts; stops by itself (a hard deadline ends it after 115 s).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
import uuid
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import psycopg
import redis

DEADLINE_SECONDS = 115
RATES = (50, 200, 1000)
BLOCK = 50  # dispatches per mode before switching: drift hits every mode alike
TASK = "bench.limits.noop"  # never registered, never run: only dispatch is measured


def _on_alarm(signum: int, _frame: Any) -> None:
    raise SystemExit(f"deadline of {DEADLINE_SECONDS}s passed; stopping")


def per_call_us(fn: Any, calls: int) -> float:
    for _ in range(min(200, calls)):
        fn()  # warm: connection, script cache
    started = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - started) / calls * 1e6


def bench_acquire(redis_url: str, calls: int) -> None:
    from conveyor.core.rate_limit import Rate, acquire

    client = redis.Redis.from_url(redis_url, decode_responses=True)
    open_rate = Rate(10**9, 1.0)  # never denies: the cost of the call itself
    key = f"bench:{uuid.uuid4().hex[:6]}"
    rounds: dict[str, list[float]] = {"ping": [], "set": [], "acquire": []}
    for _ in range(3):  # interleaved rounds, median reported
        rounds["ping"].append(per_call_us(client.ping, calls))
        rounds["set"].append(per_call_us(lambda: client.set("bench:set", "1"), calls))
        rounds["acquire"].append(per_call_us(lambda: acquire(key, open_rate, client=client), calls))
    ping, setting, limiter = (statistics.median(rounds[name]) for name in rounds)
    print(f"\n1. acquire(): {calls} calls x 3 rounds, one connection (median of rounds)")
    print(f"   PING             {ping:8.1f} us/call   (baseline)")
    print(f"   SET              {setting:8.1f} us/call   {setting / ping:5.2f}x PING")
    print(f"   acquire (GCRA)   {limiter:8.1f} us/call   {limiter / ping:5.2f}x PING")
    client.close()


MODES = {
    "acquire, burst 1": "hammer",
    "acquire, burst rate/20": "hammer",
    "reserve + sleep": "reserve",
}


def _caller(
    redis_url: str,
    key: str,
    rate: str,
    how: str,
    seconds: float,
    barrier: Barrier,
    out: multiprocessing.Queue[tuple[int, list[float]]],
) -> None:
    """One process: `hammer` calls acquire() back to back; `reserve` books a slot within
    1 s and sleeps until it, as a waiting task does (with a countdown instead of a sleep)."""
    from conveyor.core.rate_limit import acquire, reserve

    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.ping()
    barrier.wait(timeout=60)
    calls, admitted = 0, []
    end = time.time() + seconds
    while (now := time.time()) < end:
        calls += 1
        if how == "hammer":
            if acquire(key, rate, client=client).allowed:
                admitted.append(now)
            continue
        decision = reserve(key, rate, horizon=1.0, client=client)
        if decision.reserved:
            if now + decision.retry_after >= end:
                break
            time.sleep(decision.retry_after)
        elif not decision.allowed:
            time.sleep(min(decision.retry_after, end - now))
            continue
        admitted.append(time.time())
    out.put((calls, admitted))


def bench_accuracy(redis_url: str, processes: int, seconds: float) -> list[str]:
    problems = []
    print(f"\n2. accuracy: {processes} processes on one key, {seconds:g} s per rate and mode")
    print("   configured  mode                     admitted/s  ratio  busiest 100ms  calls/s")
    context = multiprocessing.get_context("spawn")
    for per_second in RATES:
        for mode, how in MODES.items():
            burst = max(1, per_second // 20) if "rate/20" in mode else 1
            rate = f"{per_second}/s burst {burst}"
            key = f"bench:{uuid.uuid4().hex[:8]}"
            barrier = context.Barrier(processes)
            out: multiprocessing.Queue[tuple[int, list[float]]] = context.Queue()
            args = (redis_url, key, rate, how, seconds, barrier, out)
            children = [context.Process(target=_caller, args=args) for _ in range(processes)]
            for child in children:
                child.start()
            results = [out.get(timeout=90) for _ in children]
            for child in children:
                child.join(timeout=10)
            calls = sum(result[0] for result in results)
            stamps = sorted(stamp for result in results for stamp in result[1])
            achieved = len(stamps) / seconds
            busiest = max(
                (sum(1 for s in stamps[i : i + per_second] if s < first + 0.1))
                for i, first in enumerate(stamps)
            )
            print(
                f"   {per_second:6d}/s   {mode:24s} {achieved:9.1f}  {achieved / per_second:5.3f}"
                f"  {busiest:5d} ({per_second / 10 + burst - 1:g})  {calls / seconds:8.0f}"
            )
            # The invariant, over the span the admissions actually cover (the processes'
            # windows start a few ms apart): never more than rate x span + burst.
            span = stamps[-1] - stamps[0]
            if len(stamps) > per_second * span + burst + 1:
                problems.append(f"{rate} {mode}: {len(stamps)} admitted in {span:.3f} s")
    return problems


def bench_unique(dispatches: int) -> list[str]:
    from conveyor.core.celery_app import get_celery
    from conveyor.core.jobs import Submission, submit

    get_celery()
    held = submit(Submission(task_name=TASK, kwargs={"held": True}, unique_for=300)).id
    modes = {
        "plain": lambda i: Submission(task_name=TASK, kwargs={"i": i}),
        "unique (new key)": lambda i: Submission(
            task_name=TASK, kwargs={"i": i}, unique_key=f"k{i}", unique_for=300
        ),
        "unique (queued key)": lambda i: Submission(
            task_name=TASK, kwargs={"held": True}, unique_for=300
        ),
    }
    times: dict[str, list[float]] = {mode: [] for mode in modes}
    for warm in range(20):
        for build in modes.values():
            submit(build(-1 - warm))
    for start in range(0, dispatches, BLOCK):
        for mode, build in modes.items():
            for i in range(start, min(start + BLOCK, dispatches)):
                began = time.perf_counter()
                job = submit(build(i))
                times[mode].append((time.perf_counter() - began) * 1e6)
                if mode == "unique (queued key)" and job.id != held:
                    raise SystemExit("a queued unique key answered with a new job")
    print(f"\n3. dispatch: submit(), {dispatches} per mode in alternating blocks of {BLOCK}")
    print("   mode                    p50 us     p99 us   p50 ratio to plain")
    base = statistics.median(times["plain"])
    for mode, samples in times.items():
        samples.sort()
        p50, p99 = statistics.median(samples), samples[int(0.99 * (len(samples) - 1))]
        print(f"   {mode:20s} {p50:9.0f} {p99:10.0f}   {p50 / base:6.2f}x")
    return []


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=5000, help="acquire() calls per round")
    parser.add_argument("--seconds", type=float, default=3.0, help="per rate, for accuracy")
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--dispatches", type=int, default=600, help="per mode")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379", help="Redis server")
    parser.add_argument("--redis-db", type=int, default=11)
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--database", default="conveyor_bench_limits")
    parser.add_argument("--sqlite", action="store_true", help="SQLite ledger, not PostgreSQL")
    args = parser.parse_args()
    if not (
        100 <= args.calls <= 50_000
        and 1 <= args.seconds <= 10
        and 1 <= args.processes <= 16
        and 50 <= args.dispatches <= 5000
    ):
        parser.error("out of bounds: calls 100-50000, seconds 1-10, processes 1-16")
    if not args.redis.startswith(("redis://127.0.0.1", "redis://localhost")):
        parser.error("the benchmark only talks to a loopback Redis")
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.alarm(DEADLINE_SECONDS)

    redis_url = f"{args.redis.rstrip('/')}/{args.redis_db}"
    work_dir = Path(tempfile.mkdtemp(prefix="conveyor-bench-limits-"))
    if args.sqlite:
        database_url = f"sqlite:///{work_dir / 'ledger.db'}"
    else:
        database_url = f"{args.postgres.rsplit('/', 1)[0]}/{args.database}"
        with psycopg.connect(args.postgres, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{args.database}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{args.database}"')
    os.environ.update(
        CONVEYOR_REDIS_URL=redis_url,
        CONVEYOR_DATABASE_URL=database_url,
        CONVEYOR_DATA_DIR=str(work_dir / "data"),
        CONVEYOR_LOG_LEVEL="WARNING",
        CONVEYOR_LOG_JSON="false",
    )
    hot = redis.Redis.from_url(redis_url)
    hot.flushdb()
    from conveyor.core.db import dispose_all
    from conveyor.core.migrate import upgrade
    from conveyor.core.settings import get_settings

    get_settings.cache_clear()
    upgrade(get_settings())

    print("Conveyor limits: rate limiter and unique dispatch")
    print(f"  python {platform.python_version()}; redis-py {redis.__version__}; ", end="")
    print(f"Redis {hot.info('server')['redis_version']}; {os.cpu_count()} CPUs")
    print(f"  Redis {redis_url}; ledger {database_url.split('://')[0]}")
    problems: list[str] = []
    try:
        bench_acquire(redis_url, args.calls)
        problems += bench_accuracy(redis_url, args.processes, args.seconds)
        problems += bench_unique(args.dispatches)
    finally:
        dispose_all()
        hot.flushdb()  # no worker will run the queued messages
        if not args.sqlite:
            with psycopg.connect(args.postgres, autocommit=True, connect_timeout=5) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{args.database}" WITH (FORCE)')
    signal.alarm(0)
    if problems:
        print("\n  PROBLEMS:\n    " + "\n    ".join(problems))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
