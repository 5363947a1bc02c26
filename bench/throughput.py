"""Throughput of Conveyor against bare Celery, and the API's submit latency.

    .venv/bin/python bench/throughput.py [--tasks N] [--concurrency C] [--rounds R]

Four scenarios drain N no-op tasks with one real prefork worker of C processes, on the same
Redis database (flushed before each scenario):

  1. bare Celery, default configuration (broker + result backend URLs, JSON)
  2. bare Celery, tuned for short tasks (bench/_tasks.py says what and why)
  3. ConveyorTask with track = False, on Conveyor's production app (conveyor.worker)
  4. ConveyorTask tracked, ledger on PostgreSQL, jobs sent with conveyor.core.jobs.submit
     (what the API does: the ledger row is committed, then the message is published)
  5. the same with an owner, as every API job has: its outcome is told to the listeners
     (webhooks) when it ends

Each scenario publishes all N messages first (timed on its own), then starts the worker.
The drain time runs from the worker's `worker_ready` signal (sent right after it starts
consuming) until the counter every no-op INCRs reaches N and the queue is empty; for the
tracked scenario also until the ledger shows N jobs succeeded. The scenarios run R rounds,
interleaved, and the median of each is reported (this machine may be shared). The worker's
CPU time per task (main process, pool processes) is reported too: it is steadier than the
rate when other processes compete for the CPUs.

Conveyor's workers recycle each pool process after CONVEYOR_WORKER_MAX_TASKS_PER_CHILD
(1000) tasks. With the defaults (2000 tasks, 2 processes) that happens right at the end of
the run, and a recycle sometimes holds the last messages until Celery's next pool check (it
runs every 5 s): that is why Conveyor's per-round rates can differ by a second's worth.

Then the API: uvicorn serving conveyor.api.app:create_app on the same Redis and PostgreSQL,
loaded from a separate process (bench/_loadgen.py) with POST /api/v1/diagnostics/jobs: a
loaded pass (1000 requests, 16 concurrent clients), then a short one-at-a-time pass for the
unloaded latency. No worker runs there; the queue is flushed afterwards.

--diagnose adds untracked runs with one of Conveyor's worker settings changed at a time, to
show where the gap to bare Celery comes from.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from _common import free_port, tail

BENCH_DIR = Path(__file__).resolve().parent
PYTHON = sys.executable

DONE_KEY = "bench:done"
READY_KEY = "bench:ready"
TRACKED_TASK = "bench.noop_tracked"

POLL_SECONDS = 0.01
WORKER_READY_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0

_children: list[subprocess.Popen[bytes]] = []


# --- process handling ----------------------------------------------------------------------


def spawn(argv: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """Start a child in its own session, so it and its pool children form one group."""
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            argv,
            env=env,
            cwd=BENCH_DIR,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    _children.append(proc)
    return proc


def _signal_group(proc: subprocess.Popen[bytes], signum: int) -> None:
    # The group id is the child's pid (start_new_session): only what this script started.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signum)


def stop(proc: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM (Celery's warm shutdown, uvicorn's graceful one), then SIGKILL the group."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            print(f"  (pid {proc.pid} ignored SIGTERM for {timeout:.0f}s; killing it)")
            _signal_group(proc, signal.SIGKILL)
            proc.wait(5)
    # Pool children the main process failed to reap would linger in the group.
    _signal_group(proc, signal.SIGKILL)
    if proc in _children:
        _children.remove(proc)


def _cleanup() -> None:
    for proc in list(_children):
        with contextlib.suppress(Exception):
            stop(proc, timeout=5)


def _on_signal(signum: int, _frame: Any) -> None:
    _cleanup()
    raise SystemExit(128 + signum)


# --- environment ---------------------------------------------------------------------------


@dataclass
class Setup:
    tasks: int
    concurrency: int
    redis_url: str
    pg_url: str
    work_dir: Path
    drain_timeout: float
    # --set NAME=VALUE: Conveyor settings the children get, to measure one changed.
    overrides: dict[str, str] = field(default_factory=dict)

    def env(self, app: str, conf: str = "") -> dict[str, str]:
        """The environment of every child: no CONVEYOR_* from the caller, only ours."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CONVEYOR_", "BENCH_"))}
        env.update(
            PYTHONPATH=str(BENCH_DIR),
            PYTHONUNBUFFERED="1",
            BENCH_SCENARIO=app,
            BENCH_REDIS_URL=self.redis_url,
            CONVEYOR_REDIS_URL=self.redis_url,
            CONVEYOR_DATABASE_URL=self.pg_url,
            CONVEYOR_DATA_DIR=str(self.work_dir / "conveyor-data"),
            # Conveyor's workers take over logging (setup_logging signal) and ignore
            # --loglevel: this is how they get the WARNING the bare workers are given.
            CONVEYOR_LOG_LEVEL="WARNING",
            CONVEYOR_LOG_JSON="false",
        )
        if conf:
            env["BENCH_CONF"] = conf
        env.update(self.overrides)
        return env

    def settings(self) -> Any:
        from conveyor.core.settings import Settings

        return Settings(
            redis_url=self.redis_url,
            database_url=self.pg_url,
            data_dir=self.work_dir / "conveyor-data",
            log_level="WARNING",
        )


# psycopg and httpx are imported where used: bench/others.py runs the bare Celery scenario
# from a virtualenv that has neither.


def parse_overrides(pairs: list[str]) -> dict[str, str]:
    """`--set CONVEYOR_NAME=value` arguments as environment entries."""
    from conveyor.core.settings_docs import unknown_variables

    overrides = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.startswith("CONVEYOR_"):
            raise SystemExit(f"--set {pair!r}: expected CONVEYOR_NAME=value")
        overrides[name] = value
    unknown = unknown_variables(overrides)
    if unknown:
        raise SystemExit("--set: " + unknown[0].replace(" and is ignored", ""))
    return overrides


def add_set_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="CONVEYOR_NAME=VALUE",
        help="a Conveyor setting for the API and workers (repeatable); the defaults otherwise",
    )


def fresh_database(admin_url: str, name: str) -> None:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def pg_scalar(url: str, sql: str, params: tuple[Any, ...] = ()) -> Any:
    import psycopg

    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        row = conn.execute(sql, params).fetchone()
        return row[0] if row else None


def _proc_stat(pid: int) -> list[str]:
    """Fields of /proc/<pid>/stat after the command name (field 3, the state, comes first)."""
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()


def worker_cpu(pid: int) -> tuple[float, float]:
    """CPU seconds used so far by a process (all threads), and by all its descendants.

    Descendants count whether alive (their own times) or already reaped, e.g. after a
    recycle (their parent's cutime/cstime). Celery's pool processes are children; other
    libraries' (bench/others.py) may be grandchildren.
    """
    ticks = os.sysconf("SC_CLK_TCK")
    try:
        own = _proc_stat(pid)
    except OSError:
        return float("nan"), float("nan")
    main = (int(own[11]) + int(own[12])) / ticks
    children = (int(own[13]) + int(own[14])) / ticks
    parents: dict[int, int] = {}
    times: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = _proc_stat(int(entry))
        except OSError:
            continue
        parents[int(entry)] = int(fields[1])
        times[int(entry)] = sum(int(x) for x in fields[11:15])
    for child, child_ticks in times.items():
        ancestor = parents[child]
        # Bounded: /proc is not read at one instant, so a reused pid could make a loop.
        for _ in range(64):
            if ancestor <= 1 or ancestor == pid:
                break
            ancestor = parents.get(ancestor, 0)
        if ancestor == pid:
            children += child_ticks / ticks
    return main, children


class OtherCpu(threading.Thread):
    """Samples /proc twice a second: CPU time of processes that are not this benchmark's.

    Not counted: this process and its descendants (workers, uvicorn, load generator) and the
    Redis and PostgreSQL servers, which the benchmark itself keeps busy. What is left (other
    jobs on a shared machine) competes for the same CPUs and makes the figures noisy.
    """

    IGNORED = frozenset({"redis-server", "postgres"})

    def __init__(self) -> None:
        super().__init__(name="other-cpu", daemon=True)
        self.ticks = os.sysconf("SC_CLK_TCK")
        self.seconds = 0.0  # cumulative, since start
        self._last: dict[int, int] = {}
        self._stop_event = threading.Event()

    def _sample(self) -> dict[int, tuple[int, str, int]]:
        found: dict[int, tuple[int, str, int]] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    text = stat.read()
            except OSError:
                continue
            comm = text[text.find("(") + 1 : text.rfind(")")]
            fields = text[text.rfind(")") + 2 :].split()
            found[int(entry)] = (int(fields[1]), comm, int(fields[11]) + int(fields[12]))
        return found

    def _tick(self) -> None:
        sample = self._sample()
        me = os.getpid()
        mine: dict[int, bool] = {}

        def is_mine(pid: int) -> bool:
            chain = []
            while pid not in mine:
                if pid == me:
                    mine[pid] = True
                    break
                if pid not in sample or pid <= 1:
                    mine[pid] = False
                    break
                chain.append(pid)
                pid = sample[pid][0]
            for link in chain:
                mine[link] = mine[pid]
            return mine[pid]

        other = 0
        for pid, (_, comm, ticks) in sample.items():
            if comm in self.IGNORED or is_mine(pid):
                continue
            other += ticks - self._last.get(pid, ticks if not self._last else 0)
        self._last = {pid: ticks for pid, (_, _, ticks) in sample.items()}
        self.seconds += max(0, other) / self.ticks

    def run(self) -> None:
        while not self._stop_event.wait(0.5):
            with contextlib.suppress(Exception):
                self._tick()

    def start(self) -> None:
        self._tick()  # the baseline: processes already running count from here on
        self.seconds = 0.0
        super().start()

    def stop(self) -> None:
        self._stop_event.set()


OTHER_CPU: OtherCpu | None = None


def other_cpu_seconds() -> float:
    return OTHER_CPU.seconds if OTHER_CPU is not None else 0.0


# --- the throughput scenarios --------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    app: str  # BENCH_SCENARIO for bench/_tasks.py
    enqueue: str  # what bench/_enqueue.py publishes
    queue: str
    tracked: bool = False
    conf: str = ""  # settings laid over the app (diagnostics only), JSON
    env: tuple[tuple[str, str], ...] = ()  # extra environment (diagnostics only)
    publisher: str = "_enqueue.py"  # run with `enqueue` and N
    worker: tuple[str, ...] = ()  # arguments to PYTHON for the worker; () is Celery's


SCENARIOS = (
    Scenario("default", "bare Celery, default config", "bare-default", "bare", "celery"),
    Scenario("tuned", "bare Celery, tuned", "bare-tuned", "bare", "celery"),
    Scenario("untracked", "ConveyorTask, track=False", "conveyor", "untracked", "default"),
    Scenario("tracked", "ConveyorTask, tracked, PG", "conveyor", "tracked", "default", True),
    Scenario("owned", "  tracked, with an owner", "conveyor", "owned", "default", True),
)

# Bare tuned's settings (bench/_tasks.py) laid over Conveyor's (celery_app.celery_config).
TUNED_OVER_CONVEYOR = {
    "worker_prefetch_multiplier": 64,
    "worker_send_task_events": False,
    "task_send_sent_event": False,
    "task_ignore_result": True,
    "task_soft_time_limit": None,
    "task_time_limit": None,
    "worker_max_tasks_per_child": None,
    "worker_max_memory_per_child": None,
    "worker_disable_rate_limits": True,
}
# One of Conveyor's production settings changed at a time, on the untracked scenario.
DIAGNOSTICS = (
    *(
        Scenario(f"diag-{key}", title, "conveyor", "untracked", "default", conf=json.dumps(conf))
        for key, title, conf in (
            ("prefetch4", "  prefetch multiplier 4 (not 1)", {"worker_prefetch_multiplier": 4}),
            (
                "noevents",
                "  task events off",
                {"worker_send_task_events": False, "task_send_sent_event": False},
            ),
            ("norecycle", "  no max tasks per child", {"worker_max_tasks_per_child": None}),
            ("noresult", "  results not stored", {"task_ignore_result": True}),
            (
                "nolimits",
                "  no time limits",
                {"task_soft_time_limit": None, "task_time_limit": None},
            ),
            ("earlyack", "  early ack (not acks_late)", {"task_acks_late": False}),
            ("astuned", "  all of bare tuned's settings", TUNED_OVER_CONVEYOR),
        )
    ),
    # Tracked with an owner, as API jobs are, reserving 4 messages per process as bare Celery
    # does: the drain is bound by the wait between one job's ack and the next's delivery.
    Scenario(
        "diag-owned-prefetch4",
        "  owned, prefetch multiplier 4",
        "conveyor",
        "owned",
        "default",
        True,
        conf=json.dumps({"worker_prefetch_multiplier": 4}),
    ),
    Scenario(
        "diag-info",
        "  log level INFO, JSON (defaults)",
        "conveyor",
        "untracked",
        "default",
        env=(("CONVEYOR_LOG_LEVEL", "INFO"), ("CONVEYOR_LOG_JSON", "true")),
    ),
)


@dataclass
class Result:
    scenario: Scenario
    enqueue_seconds: float
    drain_seconds: float
    startup_seconds: float
    done: int
    cpu_main: float  # worker CPU seconds from ready to done: the main process...
    cpu_children: float  # ...and the pool processes
    other_cpus: float  # CPUs used by unrelated processes during the drain, on average
    timed_out: bool = False

    @property
    def rate(self) -> float:
        return self.done / self.drain_seconds if self.drain_seconds > 0 else 0.0

    @property
    def main_ms_per_task(self) -> float:
        return 1000 * self.cpu_main / self.done if self.done else float("nan")

    @property
    def children_ms_per_task(self) -> float:
        return 1000 * self.cpu_children / self.done if self.done else float("nan")


@dataclass
class Summary:
    scenario: Scenario
    runs: list[Result] = field(default_factory=list)

    def median(self, attr: str) -> float:
        return float(statistics.median(getattr(run, attr) for run in self.runs))

    @property
    def rate(self) -> float:
        return self.median("rate")


def run_scenario(setup: Setup, scenario: Scenario, r: redis.Redis) -> Result:
    n = setup.tasks
    r.flushdb()
    if scenario.tracked:
        import psycopg

        with psycopg.connect(setup.pg_url, autocommit=True) as conn:
            conn.execute("TRUNCATE conveyor_jobs, conveyor_dead_letters CASCADE")
    env = dict(setup.env(scenario.app, scenario.conf), **dict(scenario.env))
    log = setup.work_dir / f"{scenario.key}.worker.log"

    # 1. Publish every message (timed on its own, not part of the drain).
    enqueue = subprocess.run(
        [PYTHON, str(BENCH_DIR / scenario.publisher), scenario.enqueue, str(n)],
        env=env,
        cwd=BENCH_DIR,
        capture_output=True,
        text=True,
        timeout=max(120.0, n / 20),
        check=False,
    )
    if enqueue.returncode != 0:
        raise RuntimeError(f"enqueue for {scenario.key} failed:\n{enqueue.stderr[-3000:]}")
    enqueue_seconds = float(json.loads(enqueue.stdout.strip().splitlines()[-1])["seconds"])
    depth = r.llen(scenario.queue)
    if depth != n:
        raise RuntimeError(f"expected {n} messages in queue {scenario.queue!r}, found {depth}")

    # 2. Start the worker and clock it from worker_ready to the last completion.
    argv = [
        PYTHON, "-m", "celery", "-A", "_tasks", "worker",
        "-c", str(setup.concurrency), "-P", "prefork", "-Q", scenario.queue,
        "-n", f"bench-{scenario.key}@%h",
        "--without-gossip", "--without-mingle", "--loglevel", "WARNING",
    ]  # fmt: skip
    if scenario.worker:
        argv = [PYTHON, *scenario.worker]
    spawned = time.time()
    worker = spawn(argv, env, log)
    try:
        ready_at = _wait_ready(worker, r, log)
        cpu_at_ready, other_at_ready = worker_cpu(worker.pid), other_cpu_seconds()
        done, finished_at, timed_out = _wait_drained(setup, scenario, worker, r, ready_at, log)
        cpu_at_done = worker_cpu(worker.pid)
        # The watcher samples every 0.5 s: let it see the end of the drain.
        time.sleep(0.6)
        other = other_cpu_seconds() - other_at_ready
    finally:
        stop(worker)
    if done > n:
        print(f"  warning: {done - n} tasks ran more than once in {scenario.key}")
    return Result(
        scenario=scenario,
        enqueue_seconds=enqueue_seconds,
        drain_seconds=finished_at - ready_at,
        startup_seconds=ready_at - spawned,
        done=min(done, n),
        cpu_main=cpu_at_done[0] - cpu_at_ready[0],
        cpu_children=cpu_at_done[1] - cpu_at_ready[1],
        other_cpus=other / max(finished_at - ready_at + 0.6, 0.001),
        timed_out=timed_out,
    )


def _wait_ready(worker: subprocess.Popen[bytes], r: redis.Redis, log: Path) -> float:
    deadline = time.monotonic() + WORKER_READY_TIMEOUT
    while True:
        value = r.get(READY_KEY)
        if value is not None:
            return float(value)
        if worker.poll() is not None:
            raise RuntimeError(f"the worker exited with {worker.returncode}:\n{tail(log)}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the worker was not ready in {WORKER_READY_TIMEOUT}s:\n{tail(log)}")
        time.sleep(POLL_SECONDS)


def _wait_drained(
    setup: Setup,
    scenario: Scenario,
    worker: subprocess.Popen[bytes],
    r: redis.Redis,
    ready_at: float,
    log: Path,
) -> tuple[int, float, bool]:
    """(tasks done, when the last one was seen done, whether the timeout hit)."""
    if scenario.tracked:
        import psycopg
    n = setup.tasks
    deadline = ready_at + setup.drain_timeout
    conn = psycopg.connect(setup.pg_url, autocommit=True) if scenario.tracked else None
    try:
        while True:
            done = int(r.get(DONE_KEY) or 0)
            if done >= n and r.llen(scenario.queue) == 0:
                if conn is None:
                    return done, time.time(), False
                row = conn.execute(
                    "SELECT count(*) FROM conveyor_jobs WHERE name = %s AND state = 'succeeded'",
                    (TRACKED_TASK,),
                ).fetchone()
                if row and row[0] >= n:
                    return done, time.time(), False
            if worker.poll() is not None:
                raise RuntimeError(f"the worker died (exit {worker.returncode}):\n{tail(log)}")
            now = time.time()
            if now > deadline:
                print(f"  TIMEOUT after {setup.drain_timeout:.0f}s: {done}/{n} done")
                return done, now, True
            time.sleep(POLL_SECONDS)
    finally:
        if conn is not None:
            conn.close()


# --- the API -------------------------------------------------------------------------------


def run_api(setup: Setup, r: redis.Redis, passes: list[tuple[int, int]]) -> list[dict[str, Any]]:
    """One uvicorn process; for each (requests, concurrency) pass, one load generator run."""
    import httpx

    from conveyor.core import api_keys
    from conveyor.core.db import dispose_all, session_scope

    r.flushdb()
    settings = setup.settings()
    with session_scope(settings) as session:
        key = api_keys.create_key(session, "bench", owner="admin", admin=True).plaintext
    dispose_all()

    port = free_port()
    env = setup.env("conveyor")
    # The benchmark's one key sends far more than a client's 600 a minute: a limit no run
    # reaches, so the per-request check still runs (and costs what it costs) but never says 429.
    env["CONVEYOR_API_RATE_LIMIT_PER_MINUTE"] = "100000000"
    log = setup.work_dir / "api.log"
    # Like `conveyor api`: one process; no access log (that one runs with log_config=None,
    # so uvicorn's INFO access lines go nowhere).
    argv = [
        PYTHON, "-m", "uvicorn", "--factory", "conveyor.api.app:create_app",
        "--host", "127.0.0.1", "--port", str(port),
        "--log-level", "warning", "--no-access-log",
    ]  # fmt: skip
    api = spawn(argv, env, log)
    url = f"http://127.0.0.1:{port}"
    results = []
    try:
        deadline = time.monotonic() + 30
        while True:
            if api.poll() is not None:
                raise RuntimeError(f"uvicorn exited with {api.returncode}:\n{tail(log)}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health/live", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the API did not answer in 30s:\n{tail(log)}")
            time.sleep(0.1)

        for requests, concurrency in passes:
            jobs_before = pg_scalar(setup.pg_url, "SELECT count(*) FROM conveyor_jobs")
            warmup = 2 * concurrency
            gen_argv = [
                PYTHON, str(BENCH_DIR / "_loadgen.py"), url,
                "--requests", str(requests), "--concurrency", str(concurrency),
                "--warmup", str(warmup),
            ]  # fmt: skip
            cpu_before = worker_cpu(api.pid)[0]
            load = subprocess.run(
                gen_argv,
                env=dict(env, BENCH_API_KEY=key),
                cwd=BENCH_DIR,
                capture_output=True,
                text=True,
                timeout=180,
                check=False,
            )
            if load.returncode != 0:
                raise RuntimeError(f"the load generator failed:\n{load.stderr[-3000:]}")
            result: dict[str, Any] = json.loads(load.stdout.strip().splitlines()[-1])
            # All of uvicorn's threads, warm-up requests included.
            served = requests + warmup
            result["cpu_ms_per_request"] = 1000 * (worker_cpu(api.pid)[0] - cpu_before) / served
            result["warmup"] = warmup
            result["ledger_rows_added"] = (
                pg_scalar(setup.pg_url, "SELECT count(*) FROM conveyor_jobs") - jobs_before
            )
            result["queued_messages"] = r.llen("default")
            r.flushdb()  # no worker will ever run these
            results.append(result)
    finally:
        stop(api)
        r.flushdb()
    return results


# --- report ----------------------------------------------------------------------------------


def ratio_line(label: str, num: Summary, den: Summary, target: float | None = None) -> str:
    value = num.rate / den.rate if den.rate else float("nan")
    verdict = ""
    if target is not None:
        verdict = f"   target >= {target:.2f}: {'met' if value >= target else 'NOT MET'}"
    return f"  {label:<28} {value:6.2f}{verdict}"


BUSY = 0.25  # CPUs used by unrelated processes above which a run is marked


def summary_line(summary: Summary, tasks: int) -> str:
    runs = " ".join(f"{run.rate:.0f}{'*' if run.other_cpus > BUSY else ''}" for run in summary.runs)
    flag = "  TIMED OUT" if any(run.timed_out for run in summary.runs) else ""
    return (
        f"  {summary.scenario.title:<32} {tasks / summary.median('enqueue_seconds'):>7.0f}/s "
        f"{summary.median('startup_seconds'):>7.2f}s {summary.median('drain_seconds'):>7.2f}s "
        f"{summary.rate:>8.0f} {summary.median('main_ms_per_task'):>7.2f} "
        f"{summary.median('children_ms_per_task'):>6.2f} "
        f"{max(run.other_cpus for run in summary.runs):>6.2f}   [{runs}]{flag}"
    )


def source_version() -> str:
    """The commit being measured, and whether src/ had uncommitted changes."""
    root = BENCH_DIR.parent
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--", "src"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown (no git)"
    return f"{head}{' + uncommitted changes in src/' if dirty else ''}"


def versions() -> str:
    from importlib.metadata import version

    names = ("celery", "kombu", "redis", "SQLAlchemy", "psycopg", "fastapi", "uvicorn")
    return ", ".join(f"{name} {version(name)}" for name in names)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=2000, help="no-op tasks per scenario")
    parser.add_argument("--concurrency", type=int, default=2, help="prefork worker processes")
    parser.add_argument("--rounds", type=int, default=3, help="runs per scenario (median)")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379", help="Redis server")
    parser.add_argument("--redis-db", type=int, default=12, help="Redis DB the bench owns")
    parser.add_argument(
        "--postgres",
        default="postgresql://postgres@127.0.0.1:5432/test",
        help="an existing database, to connect to for CREATE DATABASE",
    )
    parser.add_argument("--database", default="conveyor_bench", help="ledger database to create")
    parser.add_argument("--api-requests", type=int, default=1000)
    parser.add_argument("--api-concurrency", type=int, default=16)
    parser.add_argument(
        "--api-serial", type=int, default=200, help="then this many one at a time (0: skip)"
    )
    parser.add_argument("--skip-api", action="store_true")
    parser.add_argument("--diagnose", action="store_true", help="also run untracked variants")
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated scenarios to run (default: all): "
        + ", ".join(s.key for s in SCENARIOS),
    )
    parser.add_argument("--drain-timeout", type=float, default=120.0, help="seconds per run")
    parser.add_argument("--keep-logs", action="store_true", help="keep worker and API logs")
    add_set_argument(parser)
    args = parser.parse_args()
    if args.tasks < 1 or args.concurrency < 1 or args.rounds < 1:
        parser.error("--tasks, --concurrency and --rounds must be positive")

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    atexit.register(_cleanup)

    work_dir = Path(tempfile.mkdtemp(prefix="conveyor-bench-"))
    setup = Setup(
        tasks=args.tasks,
        concurrency=args.concurrency,
        redis_url=f"{args.redis.rstrip('/')}/{args.redis_db}",
        pg_url=f"{args.postgres.rsplit('/', 1)[0]}/{args.database}",
        work_dir=work_dir,
        drain_timeout=args.drain_timeout,
        overrides=parse_overrides(args.set),
    )
    r = redis.Redis.from_url(setup.redis_url, socket_timeout=10)
    r.ping()
    fresh_database(args.postgres, args.database)
    from conveyor.core.migrate import upgrade

    upgrade(setup.settings())

    print("Conveyor throughput benchmark")
    print(f"  conveyor at {source_version()}")
    print(f"  python {platform.python_version()}; {versions()}")
    print(f"  {os.cpu_count()} CPUs; Redis {setup.redis_url}; ledger {setup.pg_url}")
    print(
        f"  {args.tasks} no-op tasks per run; worker -P prefork -c {args.concurrency}; "
        f"{args.rounds} round(s), medians shown"
    )
    print()
    global OTHER_CPU
    OTHER_CPU = OtherCpu()
    OTHER_CPU.start()
    run_started = time.monotonic()

    chosen = [s for s in SCENARIOS if not args.only or s.key in args.only.split(",")]
    summaries = {s.key: Summary(s) for s in chosen}
    failed = False
    try:
        for round_number in range(args.rounds):
            for scenario in chosen:
                summaries[scenario.key].runs.append(run_scenario(setup, scenario, r))
            print(f"  round {round_number + 1}/{args.rounds} done", flush=True)

        print()
        print(
            f"  {'':<32} {'':>9} {'':>8} {'':>8} {'':>8} {'worker CPU ms/task':>14}\n"
            f"  {'scenario':<32} {'enqueue':>9} {'startup':>8} {'drain':>8} {'tasks/s':>8} "
            f"{'main':>7} {'pool':>6} {'other':>6}"
        )
        for summary in summaries.values():
            print(summary_line(summary, args.tasks))
        print(
            "  enqueue: messages published per second by one process, before the worker "
            "starts\n  startup: worker spawn to ready; drain: ready to last task done\n"
            "  worker CPU: CPU time of the worker's main process and of its pool processes "
            "during\n  the drain, per task; other: most CPUs used by unrelated processes (not "
            "this\n  benchmark, Redis or PostgreSQL) during a drain; [...]: tasks/s of each "
            f"round,\n  * where other processes used more than {BUSY} CPUs"
        )
        print()
        print("Ratios of drain rates (medians)")
        ratios = (
            ("untracked / tuned bare", "untracked", "tuned", 1.0),
            ("tuned bare / default bare", "tuned", "default", None),
            ("untracked / default bare", "untracked", "default", None),
            ("tracked / default bare", "tracked", "default", None),
            ("owned / default bare", "owned", "default", 0.8),
            ("owned / untracked", "owned", "untracked", None),
        )
        for label, num, den, target in ratios:
            if num in summaries and den in summaries:
                print(ratio_line(label, summaries[num], summaries[den], target))

        if args.diagnose:
            print()
            print("Diagnostics: one of Conveyor's settings changed at a time")
            for scenario in DIAGNOSTICS:
                if args.only and scenario.key not in args.only.split(","):
                    continue
                summary = Summary(scenario)
                for _ in range(args.rounds):
                    summary.runs.append(run_scenario(setup, scenario, r))
                base = summaries.get("untracked")
                versus = f"   x{summary.rate / base.rate:.2f}" if base else ""
                print(summary_line(summary, args.tasks) + versus)

        if not args.skip_api:
            print()
            print(
                "API submit latency: POST /api/v1/diagnostics/jobs, one uvicorn process, no worker"
            )
            passes = [(args.api_requests, args.api_concurrency)]
            if args.api_serial:
                passes.append((args.api_serial, 1))
            for api in run_api(setup, r, passes):
                print(
                    f"  {api['requests']} requests, {api['concurrency']} concurrent "
                    f"client(s), after {api['warmup']} warm-up requests:"
                )
                print(
                    f"    p50 {api['p50_ms']:.1f} ms   p90 {api['p90_ms']:.1f} ms   "
                    f"p99 {api['p99_ms']:.1f} ms   max {api['max_ms']:.1f} ms   "
                    f"mean {api['mean_ms']:.1f} ms"
                )
                print(
                    f"    {api['requests_per_second']:.0f} requests/s; API process CPU "
                    f"{api['cpu_ms_per_request']:.2f} ms per request; statuses "
                    f"{api['statuses']}"
                )
                print(
                    f"    ledger rows added {api['ledger_rows_added']}, messages queued "
                    f"{api['queued_messages']} (then flushed)"
                )
                for error in api["errors"]:
                    print(f"    error: {error}")
        elapsed = time.monotonic() - run_started
        busy = OTHER_CPU.seconds / elapsed
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
        r.flushdb()
        if failed or args.keep_logs:
            print(f"\nlogs kept in {work_dir}")
        else:
            shutil.rmtree(work_dir, ignore_errors=True)
    timed_out = any(run.timed_out for summary in summaries.values() for run in summary.runs)
    return 1 if timed_out else 0


if __name__ == "__main__":
    sys.exit(main())
