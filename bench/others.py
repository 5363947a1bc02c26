"""Throughput of huey, dramatiq and taskiq against bare Celery, with default configurations.

    python3 bench/others.py [--tasks N] [--rounds R]

The same drain as bench/throughput.py's first scenario, for four libraries on the same Redis
database (BENCH_REDIS_URL, default redis://127.0.0.1:6379/6, flushed before each run):

  1. bare Celery, default configuration: bench/_tasks.py's "bare-default" app (results
     stored in Redis), worker -P prefork -c 2
  2. huey: RedisHuey (bench/_others_huey.py), huey_consumer -k process -w 2 -q
  3. dramatiq: RedisBroker (bench/_others_dramatiq.py), --processes 2 --threads 1
  4. taskiq: taskiq-redis ListQueueBroker (bench/_others_taskiq.py), taskiq worker --workers 2

Each no-op does one Redis INCR on a counter. A run publishes all N messages first from one
process (timed on its own), then starts the worker; the drain runs from the worker being
ready (Celery's worker_ready; for the others, the first worker process about to consume)
until the counter reaches N and the queue list is empty. The runs go through
throughput.run_scenario, so all four are timed by the same code. The libraries run R
rounds, interleaved, and the medians are reported with the worker's CPU time per task,
read from /proc for its whole process tree, and the ratios to bare Celery in the same run.
Workers log at WARNING (huey's -q, taskiq's --log-level), as throughput.py's Celery does;
dramatiq's default INFO logs nothing per task.

The defaults differ in what they promise, and that is part of what is measured: Celery
acks a message when a pool process takes it and stores each result; huey and taskiq's
ListQueueBroker pop the message off the list (nothing to ack), and store no None result
(huey) or no result at all (taskiq); dramatiq acks after the run (at-least-once) and stores
no result without its Results middleware.

These libraries are no dependencies of the project: on first use the script makes its own
virtualenv, bench/.venv-others (python3 -m venv, then pip install huey dramatiq[redis]
taskiq taskiq-redis celery[redis] redis), and runs itself again with that virtualenv's Python.
"""

from __future__ import annotations

import argparse
import atexit
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path
from typing import NoReturn

BENCH_DIR = Path(__file__).resolve().parent
VENV = BENCH_DIR / ".venv-others"
VENV_PYTHON = VENV / "bin" / "python"
# celery[redis], not celery: kombu's Redis transport also needs `packaging`.
REQUIREMENTS = ("huey", "dramatiq[redis]", "taskiq", "taskiq-redis", "celery[redis]", "redis")
# Written once pip has succeeded: a venv left half-installed is completed on the next run.
STAMP = VENV / "bench-requirements.txt"
REEXEC_FLAG = "BENCH_OTHERS_REEXEC"
PROCESSES = 2


def ensure_venv() -> None:
    wanted = "\n".join(REQUIREMENTS) + "\n"
    if VENV_PYTHON.exists() and STAMP.exists() and STAMP.read_text() == wanted:
        return
    print(f"setting up {VENV} (first use)", flush=True)
    if not VENV_PYTHON.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True, timeout=300)
    subprocess.run(
        [str(VENV_PYTHON), "-m", "pip", "install", "--quiet", *REQUIREMENTS],
        check=True,
        timeout=1200,
    )
    STAMP.write_text(wanted)


def reexec_in_venv() -> NoReturn:
    if os.environ.get(REEXEC_FLAG):
        raise SystemExit(f"still not running in {VENV} after re-exec (sys.prefix {sys.prefix})")
    ensure_venv()
    env = dict(os.environ, **{REEXEC_FLAG: "1"})
    # The venv's python is a symlink: exec it by that path, not the resolved one, so that
    # Python finds the venv. A fixed argument list, as with subprocess (S603).
    argv = [str(VENV_PYTHON), str(Path(__file__)), *sys.argv[1:]]
    os.execve(VENV_PYTHON, argv, env)  # noqa: S606


if __name__ == "__main__" and Path(sys.prefix).resolve() != VENV.resolve():
    reexec_in_venv()

# Only importable from the venv (redis), or after it (throughput.py imports redis).
import redis  # noqa: E402

import throughput as tp  # noqa: E402

CELERY = next(s for s in tp.SCENARIOS if s.key == "default")
OTHERS = (
    tp.Scenario(
        "huey",
        "huey, RedisHuey",
        app="",
        enqueue="huey",
        queue="huey.redis.bench",
        publisher="_others_enqueue.py",
        worker=("-m", "huey.bin.huey_consumer", "_others_huey.huey",
                "-k", "process", "-w", str(PROCESSES), "-q"),
    ),
    tp.Scenario(
        "dramatiq",
        "dramatiq, RedisBroker",
        app="",
        enqueue="dramatiq",
        queue="dramatiq:default",
        publisher="_others_enqueue.py",
        worker=("-m", "dramatiq", "_others_dramatiq",
                "--processes", str(PROCESSES), "--threads", "1"),
    ),
    tp.Scenario(
        "taskiq",
        "taskiq, ListQueueBroker",
        app="",
        enqueue="taskiq",
        queue="taskiq",
        publisher="_others_enqueue.py",
        worker=("-m", "taskiq", "worker", "_others_taskiq:broker",
                "--workers", str(PROCESSES), "--log-level", "WARNING"),
    ),
)  # fmt: skip
LIBRARIES = ("celery", "kombu", "redis", "huey", "dramatiq", "taskiq", "taskiq-redis")


def cpu_ms_per_task(summary: tp.Summary) -> float:
    """Median over the runs of the whole worker tree's CPU time per task."""
    return float(
        statistics.median(run.main_ms_per_task + run.children_ms_per_task for run in summary.runs)
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=20000, help="no-op tasks per run")
    parser.add_argument("--rounds", type=int, default=3, help="runs per library (median)")
    parser.add_argument("--drain-timeout", type=float, default=300.0, help="seconds per run")
    parser.add_argument("--keep-logs", action="store_true", help="keep the workers' logs")
    args = parser.parse_args()
    if args.tasks < 1 or args.rounds < 1:
        parser.error("--tasks and --rounds must be positive")

    signal.signal(signal.SIGTERM, tp._on_signal)
    signal.signal(signal.SIGINT, tp._on_signal)
    atexit.register(tp._cleanup)

    redis_url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/6")
    work_dir = Path(tempfile.mkdtemp(prefix="conveyor-bench-others-"))
    setup = tp.Setup(
        tasks=args.tasks,
        concurrency=PROCESSES,
        redis_url=redis_url,
        pg_url="",  # no scenario here is tracked
        work_dir=work_dir,
        drain_timeout=args.drain_timeout,
    )
    r = redis.Redis.from_url(redis_url, socket_timeout=10)
    server = r.info("server")["redis_version"]

    print("Task queue libraries against bare Celery (no-op tasks on Redis)")
    print(f"  python {platform.python_version()} ({VENV.name})")
    print("  " + ", ".join(f"{name} {version(name)}" for name in LIBRARIES))
    print(f"  {os.cpu_count()} CPUs; Redis server {server} at {redis_url}")
    print(
        f"  {args.tasks} no-op tasks per run (one INCR each); {PROCESSES} worker processes; "
        f"{args.rounds} round(s), medians shown"
    )
    print()
    tp.OTHER_CPU = tp.OtherCpu()
    tp.OTHER_CPU.start()

    scenarios = (CELERY, *OTHERS)
    summaries = {s.key: tp.Summary(s) for s in scenarios}
    errors: dict[str, str] = {}
    failed = False
    try:
        for round_number in range(args.rounds):
            for scenario in scenarios:
                if scenario.key in errors:
                    continue
                try:
                    summaries[scenario.key].runs.append(tp.run_scenario(setup, scenario, r))
                except (RuntimeError, subprocess.SubprocessError) as exc:
                    # One library failing still leaves the others' figures worth having.
                    errors[scenario.key] = str(exc)
                    print(f"  {scenario.key} failed, left out from now on:\n{exc}")
            print(f"  round {round_number + 1}/{args.rounds} done", flush=True)

        print()
        print(
            f"  {'':<32} {'':>9} {'':>8} {'':>8} {'':>8} {'worker CPU ms/task':>14}\n"
            f"  {'library':<32} {'enqueue':>9} {'startup':>8} {'drain':>8} {'tasks/s':>8} "
            f"{'main':>7} {'pool':>6} {'other':>6}"
        )
        for summary in summaries.values():
            if summary.runs:
                print(tp.summary_line(summary, args.tasks))
            else:
                print(f"  {summary.scenario.title:<32} failed")
        print(
            "  enqueue: messages published per second by one process, before the worker "
            "starts\n  startup: worker spawn to ready; drain: ready to last task done\n"
            "  worker CPU: CPU time of the worker's main process and of all its descendants "
            "(pool or\n  worker processes) during the drain, per task; other: most CPUs used "
            "by unrelated\n  processes during a drain; [...]: tasks/s of each round, * where "
            f"they used more than {tp.BUSY} CPUs"
        )

        print()
        print("Against bare Celery, default config, in this run (medians)")
        print(f"  {'library':<32} {'tasks/s':>8} {'ratio':>6} {'CPU ms/task':>12} {'ratio':>6}")
        base = summaries[CELERY.key]
        for summary in summaries.values():
            if not summary.runs:
                continue
            cpu = cpu_ms_per_task(summary)
            if base.runs:
                rate_ratio = f"{summary.rate / base.rate:6.2f}"
                cpu_ratio = f"{cpu / cpu_ms_per_task(base):6.2f}"
            else:
                rate_ratio = cpu_ratio = f"{'-':>6}"
            print(
                f"  {summary.scenario.title:<32} {summary.rate:>8.0f} {rate_ratio} "
                f"{cpu:>12.3f} {cpu_ratio}"
            )
        print("  CPU ms/task: main process and descendants together")
    except BaseException:
        failed = True
        raise
    finally:
        tp.OTHER_CPU.stop()
        r.flushdb()
        if failed or errors or args.keep_logs:
            print(f"\nlogs kept in {work_dir}")
        else:
            shutil.rmtree(work_dir, ignore_errors=True)
    timed_out = any(run.timed_out for summary in summaries.values() for run in summary.runs)
    return 1 if timed_out or errors else 0


if __name__ == "__main__":
    sys.exit(main())
