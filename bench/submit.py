"""The API's submit path: Conveyor against the plain FastAPI + Celery pattern.

    .venv/bin/python bench/submit.py [--client auto|wrk|python] [--seconds T]
        [--requests N] [--concurrency C] [--serial S] [--e2e-jobs J] [--rounds R]
        [--redis-db 15] [--database conveyor_bench_submit]

Both sides give the same durable outcome: a committed row in PostgreSQL, then a message on
the same Redis database (`--redis-db`, flushed before and after each step).

  Conveyor  one uvicorn process serving conveyor.api.app:create_app, as bench/throughput.py
            runs it: POST /api/v1/diagnostics/jobs {"steps": 1, "step_seconds": 0} with an
            admin key (a ledger row in conveyor_jobs, then the message)
  plain     one uvicorn process serving bench/_plain_api.py: POST /jobs, a bearer token
            compared with a constant, one INSERT into a table of its own, commit, then
            `task.delay()` on a default Celery app (bench/_plain_tasks.py)

Each side is loaded from a separate process: wrk when it is installed (`apt-get install
wrk`; `--client wrk`), C concurrent connections for `--seconds` (5), then one connection for as
long, each after a 1 s warm-up; else bench/_loadgen.py (`--client python`), N requests from C
concurrent clients, then S (200) one at a time. wrk is the one to trust: a Python client
costs about as much CPU per request as the plain route itself, and its latency adds to the
server's. No worker runs then; the queue is flushed afterwards. Figures per pass:

  requests/s   completed requests over the pass's wall time
  p50/p90/p99  request latency as the client sees it, over loopback
  CPU ms/req   CPU time of the uvicorn process (all threads) per request, warm-up included:
               steadier than the rate when other processes compete for the 2 CPUs
  other        CPUs used by unrelated processes during the pass (not this benchmark, Redis
               or PostgreSQL); above 0.25 the figures are disturbed

End to end at idle: a worker runs for each side (Conveyor: `celery -A conveyor.worker worker
-Q default -c 1`; plain: `celery -A _plain_tasks worker -c 1`, whose task UPDATEs its row to
'succeeded'). J jobs are submitted one at a time over HTTP; each is timed from just before
its POST until a PostgreSQL query sees its row in state 'succeeded'. The row is polled in a
loop of one query on an open connection and a 1 ms sleep, so a state change is seen about
half a loop (well under a millisecond) after its commit. The first 3 jobs of each side are
warm-up, and the first of all also waits for the worker to start.

With R > 1 the sides run interleaved, R rounds, and medians are shown. Needs Redis and
PostgreSQL; the database `--database` is created at the start and dropped at the end.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import platform
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import redis

import _plain_tasks
from _common import free_port, percentile, tail
from throughput import (
    BENCH_DIR,
    BUSY,
    PYTHON,
    OtherCpu,
    Setup,
    _cleanup,
    _on_signal,
    add_set_argument,
    fresh_database,
    parse_overrides,
    spawn,
    stop,
    versions,
    worker_cpu,
)

WARMUP_JOBS = 3
JOB_TIMEOUT = 30.0  # seconds from POST to 'succeeded', per job
FIRST_JOB_TIMEOUT = 90.0  # the first one also waits for the worker to start
POLL_SECONDS = 0.001
SERIAL_REQUESTS = 200

OTHER_CPU: OtherCpu | None = None


@dataclass(frozen=True)
class Side:
    key: str
    title: str
    path: str
    health: str
    table: str
    api_argv: tuple[str, ...]
    worker_argv: tuple[str, ...]


_UVICORN = (PYTHON, "-m", "uvicorn", "--host", "127.0.0.1", "--log-level", "warning")
_WORKER = ("--without-gossip", "--without-mingle", "--loglevel", "WARNING")

SIDES = (
    Side(
        key="conveyor",
        title="Conveyor",
        path="/api/v1/diagnostics/jobs",
        health="/health/live",
        table="conveyor_jobs",
        api_argv=(*_UVICORN, "--no-access-log", "--factory", "conveyor.api.app:create_app"),
        worker_argv=(PYTHON, "-m", "celery", "-A", "conveyor.worker", "worker", "-Q", "default"),
    ),
    Side(
        key="plain",
        title="plain FastAPI + Celery",
        path="/jobs",
        health="/health",
        table="plain_jobs",
        api_argv=(*_UVICORN, "--no-access-log", "_plain_api:app"),
        worker_argv=(PYTHON, "-m", "celery", "-A", "_plain_tasks", "worker"),
    ),
)


def other_cpu_seconds() -> float:
    return OTHER_CPU.seconds if OTHER_CPU is not None else 0.0


def side_env(setup: Setup, side: Side) -> tuple[dict[str, str], str]:
    """The children's environment for one side, and the bearer token its API accepts."""
    env = setup.env(side.key)
    if side.key == "conveyor":
        from conveyor.core import api_keys
        from conveyor.core.db import dispose_all, session_scope

        with session_scope(setup.settings()) as session:
            key = api_keys.create_key(session, "bench", owner="admin", admin=True).plaintext
        dispose_all()
        # As in throughput.py: the check runs (and costs what it costs) but never says 429.
        env["CONVEYOR_API_RATE_LIMIT_PER_MINUTE"] = "100000000"
    else:
        key = secrets.token_urlsafe(24)
        env["BENCH_PLAIN_DATABASE_URL"] = setup.pg_url
    env["BENCH_API_KEY"] = key
    return env, key


def start_api(setup: Setup, side: Side, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    log = setup.work_dir / f"api-{side.key}.log"
    api = spawn([*side.api_argv, "--port", str(port)], env, log)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        if api.poll() is not None:
            raise RuntimeError(f"uvicorn exited with {api.returncode}:\n{tail(log)}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}{side.health}", timeout=1).status_code == 200:
                return api, url
        if time.monotonic() > deadline:
            stop(api)
            raise RuntimeError(f"the {side.key} API did not answer in 30s:\n{tail(log)}")
        time.sleep(0.1)


# wrk's script: the same POST as bench/_loadgen.py, and its figures as one JSON line.
WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = '{"steps": 1, "step_seconds": 0}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("BENCH_API_KEY")
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "not_2xx": %d, "socket_errors": %d, '
      .. '"p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d}\\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""
WRK_WARMUP_SECONDS = 1


def wrk_pass(
    side: Side,
    api: subprocess.Popen[bytes],
    url: str,
    env: dict[str, str],
    seconds: float,
    concurrency: int,
    work_dir: Path,
) -> dict[str, Any]:
    """One wrk run (a C client: its own cost is next to nothing) for `seconds`."""
    script = work_dir / "post.lua"
    script.write_text(WRK_SCRIPT)

    def run(duration: float) -> dict[str, Any]:
        argv = [
            "wrk", "-t", str(min(concurrency, 2)), "-c", str(concurrency),
            "-d", f"{max(1, round(duration))}s", "--timeout", "30s", "-s", str(script),
            f"{url}{side.path}",
        ]  # fmt: skip
        done = subprocess.run(
            argv, env=env, capture_output=True, text=True, timeout=duration + 60, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"wrk failed:\n{done.stderr[-3000:]}")
        figures: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        return figures

    run(WRK_WARMUP_SECONDS)
    cpu_before, other_before = worker_cpu(api.pid)[0], other_cpu_seconds()
    started = time.monotonic()
    figures = run(seconds)
    time.sleep(0.6)  # the CPU watcher samples every 0.5 s
    count = figures["requests"]
    ok = count - figures["not_2xx"] - figures["socket_errors"]
    statuses = {"202": ok}
    if count != ok:
        statuses["other"] = count - ok
    return {
        "requests": count,
        "concurrency": concurrency,
        "requests_per_second": count / (figures["duration_us"] / 1e6),
        "p50_ms": figures["p50_us"] / 1000,
        "p90_ms": figures["p90_us"] / 1000,
        "p99_ms": figures["p99_us"] / 1000,
        "max_ms": figures["max_us"] / 1000,
        "statuses": statuses,
        "errors": [],
        "cpu_ms_per_request": 1000 * (worker_cpu(api.pid)[0] - cpu_before) / max(count, 1),
        "other_cpus": (other_cpu_seconds() - other_before) / (time.monotonic() - started),
    }


def load_pass(
    side: Side,
    api: subprocess.Popen[bytes],
    url: str,
    env: dict[str, str],
    requests: int,
    concurrency: int,
) -> dict[str, Any]:
    """One load generator run against a started API, as throughput.py's run_api does it."""
    warmup = 2 * concurrency
    argv = [
        PYTHON, str(BENCH_DIR / "_loadgen.py"), url, "--path", side.path,
        "--requests", str(requests), "--concurrency", str(concurrency),
        "--warmup", str(warmup),
    ]  # fmt: skip
    cpu_before, other_before = worker_cpu(api.pid)[0], other_cpu_seconds()
    started = time.monotonic()
    load = subprocess.run(
        argv, env=env, cwd=BENCH_DIR, capture_output=True, text=True, timeout=300, check=False
    )
    if load.returncode != 0:
        raise RuntimeError(f"the load generator failed:\n{load.stderr[-3000:]}")
    # The watcher samples every 0.5 s: let it see the end of the pass.
    time.sleep(0.6)
    result: dict[str, Any] = json.loads(load.stdout.strip().splitlines()[-1])
    result["cpu_ms_per_request"] = (
        1000 * (worker_cpu(api.pid)[0] - cpu_before) / (requests + warmup)
    )
    result["other_cpus"] = (other_cpu_seconds() - other_before) / (time.monotonic() - started)
    return result


def end_to_end(setup: Setup, side: Side, url: str, key: str, jobs: int) -> dict[str, Any]:
    """POST one job at a time; time each until its row reads 'succeeded'."""
    latencies: list[float] = []
    sql = f"SELECT state FROM {side.table} WHERE id = %s"  # noqa: S608 (a constant)
    headers = {"Authorization": f"Bearer {key}"}
    body = {"steps": 1, "step_seconds": 0}
    started = time.monotonic()
    other_before = other_cpu_seconds()
    with (
        httpx.Client(base_url=url, headers=headers, timeout=30) as client,
        psycopg.connect(setup.pg_url, autocommit=True, connect_timeout=5) as conn,
    ):
        for number in range(WARMUP_JOBS + jobs):
            posted = time.perf_counter()
            response = client.post(side.path, json=body)
            if response.status_code != 202:
                raise RuntimeError(f"{side.key}: {response.status_code} {response.text[:200]}")
            job_id = response.json()["job_id"]
            timeout = FIRST_JOB_TIMEOUT if number == 0 else JOB_TIMEOUT
            deadline = posted + timeout
            while True:
                row = conn.execute(sql, (job_id,)).fetchone()
                if row and row[0] == "succeeded":
                    done = time.perf_counter()
                    break
                if row and row[0] in ("failed", "dead", "cancelled"):
                    raise RuntimeError(f"{side.key}: job {job_id} ended {row[0]}")
                if time.perf_counter() > deadline:
                    raise RuntimeError(f"{side.key}: job {job_id} not done in {timeout:.0f}s")
                time.sleep(POLL_SECONDS)
            if number >= WARMUP_JOBS:
                latencies.append(done - posted)
    time.sleep(0.6)
    latencies.sort()
    return {
        "jobs": jobs,
        "p50_ms": percentile(latencies, 0.50) * 1000,
        "p90_ms": percentile(latencies, 0.90) * 1000,
        "max_ms": latencies[-1] * 1000 if latencies else float("nan"),
        "other_cpus": (other_cpu_seconds() - other_before) / (time.monotonic() - started),
    }


def run_side(setup: Setup, side: Side, r: redis.Redis, args: argparse.Namespace) -> dict:
    """Load passes with no worker, then end to end with one worker, on one uvicorn process."""
    r.flushdb()
    env, key = side_env(setup, side)
    api, url = start_api(setup, side, env)
    result: dict[str, Any] = {}
    try:
        if args.client == "wrk":
            loaded = wrk_pass(side, api, url, env, args.seconds, args.concurrency, setup.work_dir)
        else:
            loaded = load_pass(side, api, url, env, args.requests, args.concurrency)
        result["loaded"] = loaded
        r.flushdb()  # no worker will ever run these
        if args.serial:
            if args.client == "wrk":
                serial = wrk_pass(side, api, url, env, args.seconds, 1, setup.work_dir)
            else:
                serial = load_pass(side, api, url, env, args.serial, 1)
            result["serial"] = serial
            r.flushdb()
        if args.e2e_jobs:
            log = setup.work_dir / f"worker-{side.key}.log"
            argv = [*side.worker_argv, "-c", "1", "-n", f"bench-submit-{side.key}@%h", *_WORKER]
            worker = spawn(argv, env, log)
            try:
                result["e2e"] = end_to_end(setup, side, url, key, args.e2e_jobs)
            except RuntimeError as exc:
                raise RuntimeError(f"{exc}\nworker log:\n{tail(log)}") from exc
            finally:
                stop(worker)
    finally:
        stop(api)
        r.flushdb()
    return result


# --- report ----------------------------------------------------------------------------------


def median(runs: list[dict], step: str, figure: str) -> float:
    values = [run[step][figure] for run in runs if step in run]
    return statistics.median(values) if values else float("nan")


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT MET"


def report(runs: dict[str, list[dict]], args: argparse.Namespace) -> None:
    print(
        f"  {'':<24} {'':<10} {'requests/s':>10} {'p50 ms':>7} {'p90 ms':>7} {'p99 ms':>7} "
        f"{'CPU ms/req':>10} {'other':>6}"
    )
    steps = [("loaded", f"{args.concurrency} clients")]
    if args.serial:
        steps.append(("serial", "1 client"))
    for step, label in steps:
        for side in SIDES:
            side_runs = runs[side.key]
            statuses = {k: v for run in side_runs for k, v in run[step]["statuses"].items()}
            bad = {k: v for k, v in statuses.items() if k != "202"}
            m = {
                figure: median(side_runs, step, figure)
                for figure in ("requests_per_second", "p50_ms", "p90_ms", "p99_ms")
            }
            cpu = median(side_runs, step, "cpu_ms_per_request")
            print(
                f"  {side.title:<24} {label:<10} {m['requests_per_second']:>10.0f} "
                f"{m['p50_ms']:>7.2f} {m['p90_ms']:>7.2f} {m['p99_ms']:>7.2f} {cpu:>10.2f} "
                f"{max(run[step]['other_cpus'] for run in side_runs):>6.2f}"
                f"{f'   not 202: {bad}' if bad else ''}"
            )
            for run in side_runs:
                for error in run[step]["errors"]:
                    print(f"    error: {error}")
    if args.e2e_jobs:
        print()
        print(f"  end to end at idle, {args.e2e_jobs} jobs one at a time, one worker -c 1")
        print(f"  {'':<24} {'p50 ms':>7} {'p90 ms':>7} {'max ms':>7} {'other':>6}")
        for side in SIDES:
            side_runs = runs[side.key]
            print(
                f"  {side.title:<24} {median(side_runs, 'e2e', 'p50_ms'):>7.2f} "
                f"{median(side_runs, 'e2e', 'p90_ms'):>7.2f} "
                f"{median(side_runs, 'e2e', 'max_ms'):>7.2f} "
                f"{max(run['e2e']['other_cpus'] for run in side_runs):>6.2f}"
            )
    print(
        "  requests/s, p50/p90/p99: as the load generator sees them, over loopback\n"
        "  CPU ms/req: CPU time of the uvicorn process per request (warm-up included)\n"
        "  end to end: POST until a query sees the row 'succeeded' (polled every 1 ms)\n"
        "  other: most CPUs used by unrelated processes (not this benchmark, Redis or\n"
        f"  PostgreSQL) during a step; above {BUSY} the figures are disturbed"
    )
    print()
    print("Ratios (Conveyor / plain, medians)")
    conveyor, plain = runs["conveyor"], runs["plain"]
    rate = median(conveyor, "loaded", "requests_per_second") / median(
        plain, "loaded", "requests_per_second"
    )
    print(
        f"  {f'requests/s at {args.concurrency} clients':<28} {rate:6.2f}   "
        f"target >= 0.70: {verdict(rate >= 0.7)}"
    )
    if args.serial:
        p50 = median(conveyor, "serial", "p50_ms")
        print(f"  {'p50 at 1 client':<28} {p50 / median(plain, 'serial', 'p50_ms'):6.2f}")
        print(
            f"  {'Conveyor p50 at 1 client':<28} {p50:6.2f} ms   "
            f"target <= 2 ms: {verdict(p50 <= 2.0)}"
        )
    if args.e2e_jobs:
        e2e = median(conveyor, "e2e", "p50_ms") / median(plain, "e2e", "p50_ms")
        print(f"  {'end-to-end p50':<28} {e2e:6.2f}   target <= 1.50: {verdict(e2e <= 1.5)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1000, help="requests in the loaded pass")
    parser.add_argument("--concurrency", type=int, default=16, help="clients in the loaded pass")
    parser.add_argument(
        "--serial", type=int, default=SERIAL_REQUESTS, help="then this many one at a time"
    )
    parser.add_argument("--e2e-jobs", type=int, default=100, help="jobs timed end to end (0: skip)")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds (median)")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379", help="Redis server")
    parser.add_argument("--redis-db", type=int, default=15, help="Redis DB the bench owns")
    parser.add_argument(
        "--postgres",
        default="postgresql://postgres@127.0.0.1:5432/test",
        help="an existing database, to connect to for CREATE DATABASE",
    )
    parser.add_argument("--database", default="conveyor_bench_submit", help="database to create")
    parser.add_argument("--keep-logs", action="store_true", help="keep the API and worker logs")
    parser.add_argument(
        "--client",
        choices=("auto", "wrk", "python"),
        default="auto",
        help="load generator: wrk (if installed: auto) or bench/_loadgen.py",
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="length of a wrk pass")
    add_set_argument(parser)
    args = parser.parse_args()
    if args.client == "auto":
        args.client = "wrk" if shutil.which("wrk") else "python"
    elif args.client == "wrk" and not shutil.which("wrk"):
        parser.error("--client wrk: wrk is not installed (apt-get install wrk)")
    if args.requests < 1 or args.concurrency < 1 or args.rounds < 1:
        parser.error("--requests, --concurrency and --rounds must be positive")
    if args.serial < 0 or args.e2e_jobs < 0:
        parser.error("--serial and --e2e-jobs must not be negative")
    if args.redis_db in (10, 11, 12, 13, 14):
        parser.error("--redis-db: 10 to 14 belong to the other benches; this one flushes its DB")

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    atexit.register(_cleanup)

    work_dir = Path(tempfile.mkdtemp(prefix="conveyor-bench-submit-"))
    setup = Setup(
        tasks=0,
        concurrency=1,
        redis_url=f"{args.redis.rstrip('/')}/{args.redis_db}",
        pg_url=f"{args.postgres.rsplit('/', 1)[0]}/{args.database}",
        work_dir=work_dir,
        drain_timeout=0,
        overrides=parse_overrides(args.set),
    )
    r = redis.Redis.from_url(setup.redis_url, socket_timeout=10)
    r.ping()
    fresh_database(args.postgres, args.database)
    from conveyor.core.migrate import upgrade

    upgrade(setup.settings())
    _plain_tasks.create_table(setup.pg_url)

    from importlib.metadata import version

    print("Conveyor submit-path benchmark")
    print(f"  conveyor {version('conveyor')}")
    print(f"  python {platform.python_version()}; {versions()}")
    print(f"  {os.cpu_count()} CPUs; Redis {setup.redis_url}; PostgreSQL {setup.pg_url}")
    if args.client == "wrk":
        passes = f"wrk, {args.seconds:g} s with {args.concurrency} clients"
        passes += f", {args.seconds:g} s with one" if args.serial else ""
    else:
        passes = f"bench/_loadgen.py, {args.requests} requests from {args.concurrency} clients"
        passes += f", {args.serial} one at a time" if args.serial else ""
    print(f"  {passes}; {args.e2e_jobs} jobs end to end; {args.rounds} round(s), medians shown")
    print()
    global OTHER_CPU
    OTHER_CPU = OtherCpu()
    OTHER_CPU.start()
    run_started = time.monotonic()

    runs: dict[str, list[dict]] = {side.key: [] for side in SIDES}
    failed = False
    try:
        for number in range(args.rounds):
            # Alternate which side goes first, so neither always runs on a warmer machine.
            order = SIDES if number % 2 == 0 else SIDES[::-1]
            for side in order:
                runs[side.key].append(run_side(setup, side, r, args))
            print(f"  round {number + 1}/{args.rounds} done", flush=True)
        print()
        report(runs, args)
        busy = OTHER_CPU.seconds / (time.monotonic() - run_started)
        print()
        print(
            f"Unrelated processes used {busy:.2f} of {os.cpu_count()} CPUs on average during "
            f"this run{' (figures are disturbed)' if busy > BUSY else ''}"
        )
    except BaseException:
        failed = True
        raise
    finally:
        OTHER_CPU.stop()
        _cleanup()
        r.flushdb()
        with (
            contextlib.suppress(psycopg.Error),
            psycopg.connect(args.postgres, autocommit=True, connect_timeout=5) as conn,
        ):
            conn.execute(f'DROP DATABASE IF EXISTS "{args.database}" WITH (FORCE)')
        if failed or args.keep_logs:
            print(f"\nlogs kept in {work_dir}")
        else:
            shutil.rmtree(work_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
