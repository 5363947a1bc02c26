"""Dispatch lag of schedules as data: slot → job recorded, with two schedulers racing.

    .venv/bin/python bench/schedules.py [--schedules 1000] [--every 10] [--seconds 35]
                                        [--postgres-url URL] [--redis URL]

A temporary PostgreSQL database (created and dropped here) gets `--schedules` schedules of
one task, every `--every` seconds. Interval slots are aligned to the epoch, so all of them
come due in the same second: the worst case, like a thousand `* * * * *` crons. Two
`conveyor scheduler` processes run for `--seconds` on loopback Redis and PostgreSQL; no worker
runs (the lag measured is the scheduler's, not a queue's). Then, from the ledger:

  - lag: the job's ledger row `created_at` minus its slot (the job is published right after),
    p50 / p99 / max over every slot run;
  - one job per slot: slots with more than one job (must be 0), and slots due during the
    run that got no run row at all (must be 0).

The published messages go to a queue of the bench's own, deleted at the end.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import redis
import sqlalchemy as sa

from _common import percentile, tail

QUEUE = "bench_schedules"
TASK = "bench.schedules.noop"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schedules", type=int, default=1000)
    parser.add_argument("--every", type=int, default=10, help="seconds between slots")
    parser.add_argument("--seconds", type=float, default=35, help="how long the schedulers run")
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("CONVEYOR_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"),
        help="a server where the bench may create and drop a database",
    )  # fmt: skip
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/12")
    args = parser.parse_args()

    name = f"conveyor_bench_sched_{uuid.uuid4().hex[:8]}"
    admin = psycopg.connect(args.postgres_url, autocommit=True, connect_timeout=5)
    admin.execute(f'CREATE DATABASE "{name}"')
    url = f"{args.postgres_url.rsplit('/', 1)[0]}/{name}"
    broker = redis.Redis.from_url(args.redis)
    try:
        run(args, url)
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()
        broker.delete(QUEUE)  # the bench's own queue, never the whole database


def run(args: argparse.Namespace, url: str) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")},
        "CONVEYOR_DATABASE_URL": url,
        "CONVEYOR_REDIS_URL": args.redis,
        "CONVEYOR_QUEUES": f"{QUEUE}=bench.schedules.*",
        "CONVEYOR_WORKLOADS": "none",
        "CONVEYOR_LOG_JSON": "false",
    }
    os.environ.update({k: v for k, v in env.items() if k.startswith("CONVEYOR_")})
    from conveyor.core.migrate import upgrade
    from conveyor.core.models import Job
    from conveyor.core.schedules.models import Schedule, ScheduleRun
    from conveyor.core.schedules.slots import Timing
    from conveyor.core.settings import get_settings

    get_settings.cache_clear()
    upgrade(get_settings())
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    timing = Timing(every_seconds=args.every)
    # The first slot at least 5 s away, so both schedulers are up when it comes.
    first = timing.next_after(datetime.now(UTC) + timedelta(seconds=5))
    with engine.begin() as connection:
        connection.execute(
            sa.insert(Schedule),
            [
                {
                    "id": uuid.uuid4().hex, "owner": "bench", "name": f"s{i}", "task": TASK,
                    "args": [], "kwargs": {"i": i}, "timezone": "UTC",
                    "every_seconds": args.every, "enabled": True, "overlap": "allow",
                    "next_slot": first, "created_at": datetime.now(UTC),
                    "updated_at": datetime.now(UTC),
                }
                for i in range(args.schedules)
            ],
        )  # fmt: skip
    logs = Path(tempfile.mkdtemp(prefix="bench-schedules-"))
    schedulers = [
        subprocess.Popen(
            [sys.executable, "-m", "conveyor.core.schedules.scheduler"],
            env=env,
            stdout=(logs / f"scheduler-{n}.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        for n in (1, 2)
    ]
    started = datetime.now(UTC)
    try:
        time.sleep(args.seconds)
    finally:
        for process in schedulers:
            process.terminate()
        for process in schedulers:
            process.wait(30)
    ended = datetime.now(UTC)
    with engine.connect() as connection:
        rows = connection.execute(
            sa.select(
                ScheduleRun.schedule_id, ScheduleRun.slot, ScheduleRun.state, Job.created_at
            ).outerjoin(Job, Job.id == ScheduleRun.job_id)
        ).all()
    engine.dispose()
    lags = sorted((made - slot).total_seconds() for _, slot, _, made in rows if made is not None)
    # Slots due while both ran, with a tick to spare at the end.
    due, slot = set(), first
    while slot <= ended - timedelta(seconds=2):
        due.add(slot)
        slot = timing.next_after(slot)
    handled = sum(1 for _, slot, _, _ in rows if slot in due)
    states: dict[str, int] = {}
    for _, _, state, _ in rows:
        states[state] = states.get(state, 0) + 1
    # Every publish is a message in the bench's queue (no worker takes them).
    published = int(redis.Redis.from_url(args.redis).llen(QUEUE))
    took = (ended - started).total_seconds()
    print(f"{args.schedules} schedules every {args.every}s, 2 schedulers, {took:.0f}s, "
          f"{len(due)} rounds; PostgreSQL and Redis on loopback")  # fmt: skip
    print(f"runs: {len(rows)} {states}; messages published: {published}")
    p50, p99 = percentile(lags, 0.50), percentile(lags, 0.99)
    peak = lags[-1] if lags else float("nan")
    print(f"dispatch lag, slot to job recorded: p50 {p50 * 1000:.0f} ms, "
          f"p99 {p99 * 1000:.0f} ms, max {peak * 1000:.0f} ms")  # fmt: skip
    print(f"jobs recorded: {len(lags)}, published twice: {published - len(lags)}; "
          f"slots due with no run: {args.schedules * len(due) - handled}")  # fmt: skip
    for n in (1, 2):
        text = tail(logs / f"scheduler-{n}.log", 5)
        if "Traceback" in text or "WARNING" in text.upper():
            print(f"scheduler {n} log tail:\n{text}")


if __name__ == "__main__":
    main()
