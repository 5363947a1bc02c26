"""Polite crawling: Conveyor's scraping workload against one Celery task per URL.

    .venv/bin/python bench/scraping.py [--pages-per-domain 30] [--domains 50]
        [--latency 0.1] [--domain-rate 2] [--in-flight 32] [--sqlite]
        [--naive-seconds 45] [--loose-seconds 90] [--redis-db 14] [--keep-logs]

The site: `--domains` loopback addresses 127.0.1.1, 127.0.1.2, ... (Linux routes all of
127/8 to lo), one threaded HTTP/1.1 server each, all on one port. Each "domain" serves
`--pages-per-domain` pages (`/` and `/page/1` ...), every one answering after `--latency`
seconds (a sleep in the handler thread, so concurrent requests overlap), each linking its
children 2i+1 and 2i+2, the next page and `/` (all on the same domain), and a robots.txt
allowing everything. The site records when every request arrives, per address; from that
the bench computes each domain's most requests in any 1-second window ([t, t + 1)), and
the most requests in flight at once, against the limit of `--domain-rate` per second.

  1. Conveyor: one worker `celery -A conveyor.worker worker -Q scraping -c 2` (2 pool
     processes) with CONVEYOR_SCRAPE_DOMAIN_RATE=<rate>/s, _DOMAIN_CONCURRENCY=2,
     _CRAWL_JOBS=2 and _REQUESTS_IN_FLIGHT=`--in-flight` (each value given, comma-separated,
     is one run); the crawl is started the way users do, POST /api/v1/crawls on a real API
     (uvicorn, conveyor.api.app:create_app), with the domains' index pages as seeds. The
     clock runs from the POST until GET /api/v1/crawls/{id} says "done".
  2. Naive: bench/_scrape_naive.py, one Celery task per URL doing a blocking
     `requests.get`, links found by a regular expression and deduplicated in a Redis set,
     on a prefork worker with the same 2 processes. Its only limit is Celery's task
     `rate_limit`, which the worker enforces per worker instance and task type: a rate for
     all domains together, nothing per domain.
       - strict: rate_limit="<rate>/s", the issue's naive pattern (the domain's rate as the
         task's); stopped after `--naive-seconds`, its rate taken over that time;
       - loose: rate_limit="<rate x domains>/s" (100/s: the sum of what the domains allow,
         the way such a limit gets raised for throughput); stopped after `--loose-seconds`.
     The clock runs from enqueuing the seeds until every page is fetched (or the bound).

Every run has a worker started fresh, a flushed Redis database and a fresh request log.
While a run goes on, a probe process sends a request every 0.5 s to one more address
(127.0.1.<domains + 1>) and notes when each left: the site's arrival stamp minus that is how
late the site's clock can be (p50, p99, max), the error bar of the 1-second windows.
For Conveyor the crawl's own counters are shown too (GET /api/v1/crawls/{id}), and on
PostgreSQL the transactions committed in its database during the crawl; --keep-logs keeps
the worker logs, every run's request log and the crawl's frontier as JSON.
Needs Redis (`--redis`, DB `--redis-db`, flushed at the start and the end) and PostgreSQL
(`--postgres`, where a database is created and dropped), or `--sqlite` (a file in the run's
temporary directory). Prints a table, the ratios and a JSON line of every figure.
"""

from __future__ import annotations

import argparse
import atexit
import bisect
import contextlib
import json
import multiprocessing
import os
import shutil
import signal
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import psycopg
import redis

from _common import free_port, percentile, tail

BENCH_DIR = Path(__file__).resolve().parent
PYTHON = sys.executable
NAIVE_MODULE = "_scrape_naive"
NAIVE_TASK = "bench.scrape.fetch"
NAIVE_SEEN, NAIVE_FETCHED = "bench:scrape:seen", "bench:scrape:fetched"
NAIVE_ERRORS, NAIVE_READY = "bench:scrape:errors", "bench:scrape:ready"
WORKER_PROCESSES = 2
READY_TIMEOUT = 60.0
CRAWL_TIMEOUT = 150.0  # seconds for one Conveyor crawl; past it the run reports what it has
POLL_SECONDS = 0.1
PROBE_INTERVAL = 0.5
USER_AGENT = "ConveyorBench/1.0 (+https://example.com/bench)"
# What GET /api/v1/crawls/{id} counts, kept with each Conveyor run.
COUNTERS = (
    "pages_queued", "pages_in_flight", "pages_failed", "pages_skipped", "pages_duplicate",
    "pages_retried", "pages_redirected", "pages_skipped_robots",
)  # fmt: skip

_children: list[subprocess.Popen[bytes]] = []
# One request the site answered: (arrived, answered) in time.monotonic(), and the path.
Hit = tuple[float, float, str]


# --- the site ------------------------------------------------------------------------------


def max_in_window(times: Iterable[float], window: float = 1.0) -> int:
    """The most of `times` inside any half-open interval [t, t + window)."""
    ordered = sorted(times)
    return max(
        (bisect.bisect_left(ordered, t + window) - i for i, t in enumerate(ordered)), default=0
    )


def max_overlap(hits: Iterable[Hit]) -> int:
    """The most requests being answered at one moment."""
    spans = [(hit[0], hit[1]) for hit in hits]
    events = sorted(
        [(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans],
        key=lambda event: (event[0], event[1]),  # an end before a start at the same instant
    )
    most = current = 0
    for _, step in events:
        current += step
        most = max(most, current)
    return most


class Site:
    """`domains` HTTP servers on 127.0.1.1... (one port), a tree of pages each."""

    def __init__(self, domains: int, pages: int, latency: float) -> None:
        if not 1 <= domains <= 249:
            raise ValueError("domains: 1 to 249 (127.0.1.1 to 127.0.1.249, then the probe's)")
        self.addresses = [f"127.0.1.{index}" for index in range(1, domains + 1)]
        # One more address, for the probe that checks the site's clock (Bench.probe).
        self.probe_address = f"127.0.1.{domains + 1}"
        self.pages = pages
        self.latency = latency
        self.port = 0
        self._lock = threading.Lock()
        # address -> [(arrived, answered, path)] in time.monotonic(); arrival is when the request
        # line and headers were read, before the added latency.
        self._log: dict[str, list[Hit]] = {}
        self._servers: list[_Server] = []
        self._threads: list[threading.Thread] = []

    def start(self) -> Site:
        for _ in range(10):
            port = free_port()
            servers: list[_Server] = []
            try:
                for address in [*self.addresses, self.probe_address]:
                    servers.append(_Server(self, (address, port)))
            except OSError:
                for server in servers:
                    server.server_close()
                continue
            self.port, self._servers = port, servers
            break
        else:
            raise RuntimeError("no port free on every 127.0.1.x address")
        for server in self._servers:
            thread = threading.Thread(
                target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True
            )
            thread.start()
            self._threads.append(thread)
        self.reset()
        return self

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()
        self._servers.clear()

    def reset(self) -> None:
        with self._lock:
            self._log = {address: [] for address in [*self.addresses, self.probe_address]}

    def record(self, address: str, arrived: float, answered: float, path: str) -> None:
        with self._lock:
            self._log[address].append((arrived, answered, path))

    def snapshot(self) -> dict[str, list[Hit]]:
        with self._lock:
            return {address: list(spans) for address, spans in self._log.items()}

    @property
    def total_pages(self) -> int:
        return self.pages * len(self.addresses)

    def index_urls(self) -> list[str]:
        return [f"http://{address}:{self.port}/" for address in self.addresses]

    def body(self, address: str, path: str) -> tuple[int, str, bytes]:
        if path == "/robots.txt":
            return 200, "text/plain", b"User-agent: *\nAllow: /\n"
        if path == "/":
            page = 0
        elif path.startswith("/page/") and path[6:].isdigit():
            page = int(path[6:])
            if not 1 <= page < self.pages:
                return 404, "text/plain", b"not found\n"
        else:
            return 404, "text/plain", b"not found\n"
        linked = [child for child in (2 * page + 1, 2 * page + 2, page + 1) if child < self.pages]
        hrefs = ["/"] + [f"/page/{child}" for child in dict.fromkeys(linked)]
        links = "".join(f'<li><a href="{href}">{href}</a></li>' for href in hrefs)
        filler = f"<p>Page {page} of {address}: some text to read. </p>" * 40
        html = (
            f'<!doctype html><html><head><meta charset="utf-8"><title>{address} page {page}'
            f"</title></head><body><h1>{address} page {page}</h1>{filler}"
            f"<ul>{links}</ul></body></html>"
        )
        return 200, "text/html; charset=utf-8", html.encode()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # keep-alive handler threads wait for their client
    request_queue_size = 128

    def __init__(self, site: Site, address: tuple[str, int]) -> None:
        self.site = site
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind does a reverse DNS lookup (getfqdn), slow without a resolver.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]  # type: ignore[assignment]

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a client hanging up is normal
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 30  # idle keep-alive connections
    server: _Server

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in two writes: without this, Nagle and delayed ACKs add
        # ~40 ms to every response on a keep-alive connection.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        arrived = time.monotonic()
        site = self.server.site
        address = str(self.server.server_address[0])
        if site.latency:
            time.sleep(site.latency)
        path = self.path.split("?", 1)[0]
        status, content_type, body = site.body(address, path)
        site.record(address, arrived, time.monotonic(), path)
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@dataclass
class Politeness:
    """What the site saw: per domain, the most requests in any 1-s window and in flight."""

    requests: int
    first: float
    last: float
    window_max: int  # the most requests one domain got in any 1-second window
    window_median: int  # the median over domains of each one's most in a window
    domains_over: int  # domains that got more than the limit in some 1-second window
    concurrency_max: int  # the most requests in flight at once to one domain
    over_by: float = 0.0  # window_max / limit

    @classmethod
    def of(cls, log: dict[str, list[Hit]], limit: float) -> Politeness:
        per_domain = [max_in_window(hit[0] for hit in hits) for hits in log.values()]
        every = [hit[0] for hits in log.values() for hit in hits]
        ordered = sorted(per_domain)
        most = max(per_domain, default=0)
        return cls(
            requests=len(every),
            first=min(every, default=0.0),
            last=max(every, default=0.0),
            window_max=most,
            window_median=ordered[len(ordered) // 2] if ordered else 0,
            domains_over=sum(1 for count in per_domain if count > limit),
            concurrency_max=max((max_overlap(hits) for hits in log.values()), default=0),
            over_by=most / limit,
        )


def _probe(url: str, stop_event: Any, sender: Any) -> None:
    """In a process of its own: GET `url` every PROBE_INTERVAL s on one connection, and
    send back when each request left (time.monotonic(), one clock for all processes)."""
    import http.client

    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    sent: list[float] = []
    due = time.monotonic()
    while not stop_event.is_set():
        due += PROBE_INTERVAL
        time.sleep(max(0.0, due - time.monotonic()))
        sent.append(time.monotonic())
        connection.request("GET", parts.path)
        connection.getresponse().read()
    connection.close()
    sender.send(sent)


# --- processes -----------------------------------------------------------------------------


def spawn(argv: list[str], env: dict[str, str], cwd: Path, log: Path) -> subprocess.Popen[bytes]:
    """A child in its own session, so it and its pool processes form one group."""
    with log.open("ab") as out:
        proc = subprocess.Popen(
            argv, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
    _children.append(proc)
    return proc


def stop(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """SIGTERM (Celery's warm shutdown, uvicorn's graceful one), then SIGKILL the group."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout)
    # The group id is the child's pid (start_new_session): only what this script started.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)
    if proc in _children:
        _children.remove(proc)


def _cleanup() -> None:
    for proc in list(_children):
        with contextlib.suppress(Exception):
            stop(proc, timeout=5)


def _on_signal(signum: int, _frame: Any) -> None:
    _cleanup()
    raise SystemExit(128 + signum)


def _proc_stat(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()


def cpu_seconds(pid: int) -> float:
    """CPU time of a process and of its children, live (pool processes) or reaped."""
    ticks = os.sysconf("SC_CLK_TCK")
    try:
        own = _proc_stat(pid)
    except OSError:
        return float("nan")
    total = sum(int(value) for value in own[11:15]) / ticks
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            fields = _proc_stat(int(entry))
            if int(fields[1]) == pid:
                total += sum(int(value) for value in fields[11:15]) / ticks
    return total


# --- the runs ------------------------------------------------------------------------------


@dataclass
class Run:
    label: str
    pages: int
    seconds: float
    politeness: Politeness
    cpu_seconds: float
    failed: int = 0
    bounded: bool = False  # stopped at its time bound before every page was fetched
    status: str = ""
    settings: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)  # the crawl's own counters
    probe_ms: dict[str, float] = field(default_factory=dict)  # the site clock's lag

    @property
    def rate(self) -> float:
        return self.pages / self.seconds if self.seconds > 0 else 0.0


@dataclass
class Bench:
    args: argparse.Namespace
    site: Site
    work: Path
    redis_url: str
    database_url: str
    client: redis.Redis
    admin: psycopg.Connection[Any] | None = None
    db_name: str = ""
    api_url: str = ""
    api_key: str = ""

    def base_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CONVEYOR_", "BENCH_"))}
        env.update(PYTHONUNBUFFERED="1", **self.conveyor_env())
        return env

    def conveyor_env(self, in_flight: int | None = None) -> dict[str, str]:
        env = {
            "CONVEYOR_REDIS_URL": self.redis_url,
            "CONVEYOR_DATABASE_URL": self.database_url,
            "CONVEYOR_DATA_DIR": str(self.work / "data"),
            "CONVEYOR_LOG_LEVEL": self.args.worker_log_level,
            "CONVEYOR_LOG_JSON": "false",
            "CONVEYOR_WORKLOADS": "scraping",
            "CONVEYOR_ALLOW_PRIVATE_NETWORKS": "true",  # the site is on loopback
            "CONVEYOR_SCRAPE_DOMAIN_RATE": f"{self.args.domain_rate}/s",
            "CONVEYOR_SCRAPE_DOMAIN_CONCURRENCY": "2",
            "CONVEYOR_SCRAPE_CRAWL_JOBS": "2",
            "CONVEYOR_SCRAPE_USER_AGENT": USER_AGENT,
            # The bench polls its crawl ten times a second with one key.
            "CONVEYOR_API_RATE_LIMIT_PER_MINUTE": "0",
        }
        if in_flight is not None:
            env["CONVEYOR_SCRAPE_REQUESTS_IN_FLIGHT"] = str(in_flight)
        return env

    def politeness(self, name: str) -> Politeness:
        """The figures of the run's request log; with --keep-logs, the log too (JSON)."""
        log = self.site.snapshot()
        if self.args.keep_logs:
            first = min((hit[0] for hits in log.values() for hit in hits), default=0.0)
            dump = {
                address: [
                    [round(hit[0] - first, 4), round(hit[1] - first, 4), hit[2]] for hit in hits
                ]
                for address, hits in log.items()
            }
            (self.work / f"requests-{name}.json").write_text(json.dumps(dump))
        crawled = {address: log[address] for address in self.site.addresses}
        return Politeness.of(crawled, self.args.domain_rate)

    @contextlib.contextmanager
    def probe(self) -> Iterator[list[float]]:
        """A process sending one request every PROBE_INTERVAL seconds to the probe address
        while the run goes on; afterwards the list holds, per request, the seconds from the
        moment it left to the moment the site stamped its arrival: how far the site's clock
        can be behind, on this machine under this load (the error of the 1-s windows)."""
        context = multiprocessing.get_context("spawn")
        stop_event = context.Event()
        receiver, sender = context.Pipe(duplex=False)
        url = f"http://{self.site.probe_address}:{self.site.port}/"
        proc = context.Process(target=_probe, args=(url, stop_event, sender), daemon=True)
        proc.start()
        delays: list[float] = []
        try:
            yield delays
        finally:
            stop_event.set()
            sent: list[float] = receiver.recv() if receiver.poll(15) else []
            proc.join(5)
            if proc.is_alive():
                proc.kill()
            arrived = sorted(hit[0] for hit in self.site.snapshot()[self.site.probe_address])
            delays.extend(stamp - left for left, stamp in zip(sent, arrived, strict=False))

    def commits(self) -> int:
        """Transactions committed in the bench's PostgreSQL database so far (0 on SQLite)."""
        if self.admin is None:
            return 0
        self.admin.execute("SELECT pg_stat_force_next_flush()")
        time.sleep(1.1)  # backends report their counts at most once a second
        row = self.admin.execute(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = %s", (self.db_name,)
        ).fetchone()
        return int(row[0]) if row else 0

    def dump_pages(self, crawl_id: str, path: Path) -> None:
        """The crawl's frontier as it ended (with --keep-logs): one row per page."""
        import sqlalchemy as sa

        from conveyor.core.db import session_scope

        query = sa.text(
            "SELECT url, status, depth, attempts, deferrals, counted, error, next_at, "
            "lease_until, fetched_at FROM conveyor_crawl_pages WHERE crawl_id = :id ORDER BY id"
        )
        with session_scope() as session:
            rows = [
                {key: str(value) if value is not None else None for key, value in row.items()}
                for row in session.execute(query, {"id": crawl_id}).mappings()
            ]
            crawl = (
                session.execute(
                    sa.text("SELECT * FROM conveyor_crawls WHERE id = :id"), {"id": crawl_id}
                )
                .mappings()
                .one()
            )
        path.write_text(json.dumps({"crawl": {k: str(v) for k, v in crawl.items()}, "pages": rows}))

    # --- Conveyor ---

    def start_api(self) -> subprocess.Popen[bytes]:
        port = free_port()
        argv = [
            PYTHON, "-m", "uvicorn", "--factory", "conveyor.api.app:create_app",
            "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
            "--no-access-log",
        ]  # fmt: skip
        log = self.work / "api.log"
        api = spawn(argv, self.base_env(), self.work, log)
        self.api_url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            if api.poll() is not None:
                raise RuntimeError(f"uvicorn exited with {api.returncode}:\n{tail(log)}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.api_url}/health/live", timeout=1).status_code == 200:
                    return api
            if time.monotonic() > deadline:
                raise RuntimeError(f"the API did not answer in 30s:\n{tail(log)}")
            time.sleep(0.1)

    def wait_conveyor_worker(self, worker: subprocess.Popen[bytes], log: Path) -> None:
        from conveyor.core.celery_app import get_celery

        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if worker.poll() is not None:
                raise RuntimeError(f"the worker exited with {worker.returncode}:\n{tail(log)}")
            if get_celery().control.ping(timeout=0.5):
                return
            time.sleep(0.2)
        raise RuntimeError(f"the worker was not ready in {READY_TIMEOUT:.0f}s:\n{tail(log)}")

    def conveyor(self, in_flight: int) -> Run:
        self.client.flushdb()
        env = dict(self.base_env(), **self.conveyor_env(in_flight))
        log = self.work / f"conveyor-worker-{in_flight}.log"
        argv = [
            PYTHON, "-m", "celery", "-A", "conveyor.worker", "worker", "-Q", "scraping",
            "-c", str(WORKER_PROCESSES), "-P", "prefork", "-n", f"bench-scrape-{in_flight}@%h",
            "--without-gossip", "--without-mingle", "--loglevel", "WARNING",
        ]  # fmt: skip
        worker = spawn(argv, env, self.work, log)
        try:
            self.wait_conveyor_worker(worker, log)
            self.site.reset()
            headers = {"Authorization": f"Bearer {self.api_key}"}
            with (
                self.probe() as lag,
                httpx.Client(base_url=self.api_url, headers=headers, timeout=30) as http,
            ):
                cpu_before = cpu_seconds(worker.pid)
                commits_before = self.commits()
                started = time.monotonic()
                response = http.post(
                    "/api/v1/crawls",
                    json={
                        "seeds": self.site.index_urls(),
                        "allowed_domains": self.site.addresses,
                        "max_pages": self.site.total_pages,
                        "max_depth": 10,
                    },
                )
                if response.status_code != 202:
                    raise RuntimeError(
                        f"POST /api/v1/crawls: {response.status_code} {response.text}"
                    )
                crawl_id = response.json()["id"]
                deadline = started + CRAWL_TIMEOUT
                while True:
                    body = http.get(f"/api/v1/crawls/{crawl_id}").json()
                    now = time.monotonic()
                    if body["status"] in ("done", "failed", "cancelled") or now > deadline:
                        break
                    if worker.poll() is not None:
                        raise RuntimeError(f"the worker died:\n{tail(log)}")
                    time.sleep(POLL_SECONDS)
                cpu = cpu_seconds(worker.pid) - cpu_before
        finally:
            stop(worker)
        commits = self.commits() - commits_before
        if self.args.keep_logs:
            self.dump_pages(crawl_id, self.work / f"pages-conveyor-{in_flight}.json")
        if body["status"] != "done":
            print(f"  crawl ended {body['status']!r} ({body.get('error')}); worker log:")
            print(tail(log, 40))
        return Run(
            label=f"Conveyor, {in_flight} requests in flight per crawl job",
            pages=int(body["pages_fetched"]),
            probe_ms=lag_figures(lag),
            seconds=now - started,
            politeness=self.politeness(f"conveyor-{in_flight}"),
            cpu_seconds=cpu,
            failed=int(body["pages_failed"]),
            bounded=body["status"] != "done",
            status=str(body["status"]),
            details={
                **{key: body[key] for key in COUNTERS},
                **({"database_commits": commits} if self.admin is not None else {}),
            },
            settings={
                "CONVEYOR_SCRAPE_REQUESTS_IN_FLIGHT": in_flight,
                "CONVEYOR_SCRAPE_CRAWL_JOBS": 2,
                "CONVEYOR_SCRAPE_DOMAIN_CONCURRENCY": 2,
                "CONVEYOR_SCRAPE_DOMAIN_RATE": f"{self.args.domain_rate}/s",
                "worker": f"-Q scraping -c {WORKER_PROCESSES}",
            },
        )

    # --- naive ---

    def naive(self, label: str, rate_limit: str, bound: float) -> Run:
        from celery import Celery

        self.client.flushdb()
        env = self.base_env()
        env.update(
            PYTHONPATH=str(self.work),  # holds _scrape_naive.py and no other bench script
            BENCH_REDIS_URL=self.redis_url,
            BENCH_RATE_LIMIT=rate_limit,
        )
        log = self.work / f"naive-worker-{label}.log"
        argv = [
            PYTHON, "-m", "celery", "-A", NAIVE_MODULE, "worker", "-Q", "celery",
            "-c", str(WORKER_PROCESSES), "-P", "prefork", "-n", f"bench-naive-{label}@%h",
            "--without-gossip", "--without-mingle", "--loglevel", "WARNING",
        ]  # fmt: skip
        worker = spawn(argv, env, self.work, log)
        app = Celery("bench_scrape_sender", broker=self.redis_url)
        total = self.site.total_pages
        try:
            deadline = time.monotonic() + READY_TIMEOUT
            while self.client.get(NAIVE_READY) is None:
                if worker.poll() is not None:
                    raise RuntimeError(f"the naive worker exited:\n{tail(log)}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the naive worker was not ready:\n{tail(log)}")
                time.sleep(0.1)
            self.site.reset()
            with self.probe() as lag:
                cpu_before = cpu_seconds(worker.pid)
                started = time.monotonic()
                seeds = self.site.index_urls()
                self.client.sadd(NAIVE_SEEN, *seeds)
                for url in seeds:
                    app.send_task(NAIVE_TASK, args=[url])
                end = started + bound
                while True:
                    fetched = int(self.client.get(NAIVE_FETCHED) or 0)
                    errors = int(self.client.get(NAIVE_ERRORS) or 0)
                    now = time.monotonic()
                    if fetched + errors >= total or now > end:
                        break
                    if worker.poll() is not None:
                        raise RuntimeError(f"the naive worker died:\n{tail(log)}")
                    time.sleep(POLL_SECONDS)
                cpu = cpu_seconds(worker.pid) - cpu_before
            politeness = self.politeness(f"naive-{label}")
        finally:
            stop(worker)
            app.close()
        return Run(
            label=f"naive, rate_limit={rate_limit} ({label})",
            pages=fetched,
            probe_ms=lag_figures(lag),
            seconds=now - started,
            politeness=politeness,
            cpu_seconds=cpu,
            failed=errors,
            bounded=fetched + errors < total,
            status="stopped at its bound" if fetched + errors < total else "all fetched",
            settings={"rate_limit": rate_limit, "worker": f"-P prefork -c {WORKER_PROCESSES}"},
        )


# --- setup and report ------------------------------------------------------------------------


def lag_figures(lag: list[float]) -> dict[str, float]:
    ordered = sorted(lag)
    if not ordered:
        return {}
    return {
        "requests": len(ordered),
        "p50": round(1000 * percentile(ordered, 0.5), 2),
        "p99": round(1000 * percentile(ordered, 0.99), 2),
        "max": round(1000 * ordered[-1], 2),
    }


def line(run: Run) -> str:
    p = run.politeness
    note = f"  ({run.status})" if run.bounded else ""
    return (
        f"  {run.label:<52} {run.pages:>5} {run.seconds:>7.1f} {run.rate:>7.2f} "
        f"{p.window_max:>5} {p.over_by:>5.1f}x {p.domains_over:>5} {p.concurrency_max:>5} "
        f"{1000 * run.cpu_seconds / max(run.pages, 1):>7.1f}{note}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--domains", type=int, default=50)
    parser.add_argument("--pages-per-domain", type=int, default=30)
    parser.add_argument("--latency", type=float, default=0.1, help="seconds per response")
    parser.add_argument("--domain-rate", type=int, default=2, help="requests/s per domain")
    parser.add_argument(
        "--in-flight",
        default="32",
        help="CONVEYOR_SCRAPE_REQUESTS_IN_FLIGHT, comma-separated for one run each",
    )
    parser.add_argument("--naive-seconds", type=float, default=45.0, help="bound, strict naive")
    parser.add_argument("--loose-seconds", type=float, default=90.0, help="bound, loose naive")
    parser.add_argument("--skip-naive", action="store_true")
    parser.add_argument("--sqlite", action="store_true", help="SQLite instead of PostgreSQL")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379", help="Redis server")
    parser.add_argument("--redis-db", type=int, default=14, help="Redis DB the bench owns")
    parser.add_argument(
        "--postgres",
        default=os.environ.get(
            "CONVEYOR_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
        help="an existing database, to connect to for CREATE DATABASE",
    )
    parser.add_argument("--keep-logs", action="store_true")
    parser.add_argument("--worker-log-level", default="WARNING", help="Conveyor's log level")
    args = parser.parse_args()
    if args.redis_db in (0, 12, 13):
        parser.error("--redis-db: 0, 12 and 13 belong to others; the bench flushes its DB")
    in_flights = [int(value) for value in args.in_flight.split(",") if value.strip()]
    if args.pages_per_domain < 1 or not in_flights:
        parser.error("--pages-per-domain and --in-flight must be positive")

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    atexit.register(_cleanup)
    began = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="bench-scrape-", dir="/tmp"))
    (work / f"{NAIVE_MODULE}.py").symlink_to(BENCH_DIR / f"{NAIVE_MODULE}.py")
    redis_url = f"{args.redis.rstrip('/')}/{args.redis_db}"
    client = redis.Redis.from_url(redis_url, socket_timeout=10)
    client.ping()
    client.flushdb()
    admin: psycopg.Connection[Any] | None = None
    db_name = ""
    if args.sqlite:
        database_url = f"sqlite:///{work / 'conveyor.db'}"
    else:
        admin = psycopg.connect(args.postgres, autocommit=True, connect_timeout=5)
        db_name = f"conveyor_bench_scrape_{uuid.uuid4().hex[:8]}"
        admin.execute(f'CREATE DATABASE "{db_name}"')
        database_url = f"{args.postgres.rsplit('/', 1)[0]}/{db_name}"
    site = Site(args.domains, args.pages_per_domain, args.latency)
    bench = Bench(args, site, work, redis_url, database_url, client, admin, db_name)
    failed = False
    runs: list[Run] = []
    try:
        # This process talks to the same Redis and database (migrations, the key, pings).
        os.environ.update(bench.conveyor_env())
        from conveyor.core import api_keys
        from conveyor.core.db import dispose_all, session_scope
        from conveyor.core.migrate import upgrade

        upgrade()
        with session_scope() as session:
            bench.api_key = api_keys.create_key(
                session, "bench", owner="admin", admin=True
            ).plaintext
        dispose_all()
        site.start()
        api = bench.start_api()
        limit = args.domain_rate
        print(
            f"Polite crawling: {args.domains} domains x {args.pages_per_domain} pages "
            f"({site.total_pages}) on 127.0.1.1-{args.domains}:{site.port}, "
            f"{1000 * args.latency:.0f} ms per response, limit {limit}/s per domain; "
            f"{WORKER_PROCESSES} worker processes; {os.cpu_count()} CPUs; "
            f"{'SQLite' if args.sqlite else 'PostgreSQL'}; Redis {redis_url}",
            flush=True,
        )
        for in_flight in in_flights:
            runs.append(bench.conveyor(in_flight))
            print(f"  done: {runs[-1].label}", flush=True)
        stop(api)
        if not args.skip_naive:
            runs.append(bench.naive("strict", f"{limit}/s", args.naive_seconds))
            print(f"  done: {runs[-1].label}", flush=True)
            loose = f"{limit * args.domains}/s"
            runs.append(bench.naive("loose", loose, args.loose_seconds))
            print(f"  done: {runs[-1].label}", flush=True)

        print()
        print(
            f"  {'':<52} {'':>5} {'':>7} {'':>7} {'per domain, 1-s window':>18} {'in':>5} "
            f"{'CPU':>7}\n"
            f"  {'run':<52} {'pages':>5} {'seconds':>7} {'pages/s':>7} {'max':>5} "
            f"{'/limit':>6} {'over':>5} {'fl.':>5} {'ms/page':>7}"
        )
        for run in runs:
            print(line(run))
            if run.details:
                print("      " + ", ".join(f"{k} {v}" for k, v in run.details.items()))
            if run.probe_ms:
                print(
                    "      site clock lag (probe, a request every {:g} s): p50 {p50} ms, "
                    "p99 {p99} ms, max {max} ms over {requests:.0f}".format(
                        PROBE_INTERVAL, **run.probe_ms
                    )
                )
        print(
            f"  max: most requests one domain got in any 1-s window [t, t+1), robots.txt "
            f"included (limit {limit});\n  over: domains above the limit in some window; "
            "in fl.: most requests in flight to one domain at once;\n  CPU: the worker's "
            "(main and pool processes), per page fetched"
        )
        conveyor_runs = [run for run in runs if run.label.startswith("Conveyor")]
        best = max(conveyor_runs, key=lambda run: run.rate)
        naive_runs = [run for run in runs if run.label.startswith("naive")]
        print()
        for naive in naive_runs:
            ratio = best.rate / naive.rate if naive.rate else float("inf")
            print(f"  {best.label} / {naive.label}: {ratio:.1f}x")
        strict = next((run for run in naive_runs if "(strict)" in run.label), None)
        if strict is not None:
            ratio = best.rate / strict.rate if strict.rate else float("inf")
            polite = best.politeness.window_max <= limit
            print(
                f"  target: >= 10x the strict naive rate with no domain over {limit} requests in "
                f"any second: {'met' if ratio >= 10 and polite else 'NOT MET'} ({ratio:.1f}x; "
                f"{'no domain over the limit' if polite else 'the limit was exceeded'})"
            )
        for run in runs:
            p = run.politeness
            if p.window_max > limit:
                print(
                    f"  {run.label}: the limit was exceeded: up to {p.window_max} requests to "
                    f"one domain in a second ({p.over_by:.1f}x the limit), on "
                    f"{p.domains_over} of {args.domains} domains"
                )
            else:
                print(
                    f"  {run.label}: no domain got more than {p.window_max} "
                    f"request{'s' if p.window_max != 1 else ''} in any second (limit {limit})"
                )
        elapsed = time.monotonic() - began
        load = os.getloadavg()[1]
        print(
            f"\n  the bench took {elapsed:.0f}s; load average over the last 5 minutes "
            f"{load:.2f} on {os.cpu_count()} CPUs (this bench keeps about 2 busy: more means "
            "other processes competed for the CPUs)"
        )
        summary = {
            "domains": args.domains,
            "pages_per_domain": args.pages_per_domain,
            "latency_seconds": args.latency,
            "domain_rate_per_second": limit,
            "worker_processes": WORKER_PROCESSES,
            "database": "sqlite" if args.sqlite else "postgresql",
            "runs": [
                {
                    **{k: v for k, v in asdict(run).items() if k != "politeness"},
                    "pages_per_second": round(run.rate, 3),
                    "politeness": {
                        k: v
                        for k, v in asdict(run.politeness).items()
                        if k not in ("first", "last")
                    },
                }
                for run in runs
            ],
            "ratios": {
                naive.label: round(best.rate / naive.rate, 2) if naive.rate else None
                for naive in naive_runs
            },
            "bench_seconds": round(elapsed, 1),
            "load_average_5m": round(load, 2),
        }
        print(json.dumps(summary))
    except BaseException:
        failed = True
        raise
    finally:
        _cleanup()
        site.stop()
        with contextlib.suppress(Exception):
            client.flushdb()
        if admin is not None:
            with contextlib.suppress(Exception):
                from conveyor.core.db import dispose_all

                dispose_all()
            admin.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
            admin.close()
        if failed or args.keep_logs:
            print(f"\nlogs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 1 if any(run.bounded and run.label.startswith("Conveyor") for run in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
