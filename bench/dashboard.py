"""The dashboard over a big ledger: time to first byte of its pages, against 200 ms.

    .venv/bin/python bench/dashboard.py [--jobs 1000000] [--dead-letters 100000]
        [--requests 100] [--keep] [--explain] [--postgres-url URL] [--redis-url URL]

A PostgreSQL database of its own (`--database`, dropped and re-created; with `--keep` it is
left in place and reused when it holds the same counts) gets Conveyor's schema from
`conveyor db upgrade`, then, by INSERT ... SELECT over generate_series on the server:

  - `--jobs` jobs over the last 30 days (the active ones in the last 6 hours), 10 queues,
    50 tasks (a few much more common), 1,000 owners and some jobs with none; 92% succeeded,
    the rest failed, dead, cancelled, queued, started or retrying; 10% of them with 1-2 tags;
  - `--dead-letters` dead letters over 30 days: 20 error types, 6 reasons, ~80-character
    messages;
  - the per-minute job figures (conveyor_job_stats) of every queue for every minute of the
    30 days, with wait and run-time histograms;

then VACUUM ANALYZE. One API process (`conveyor api`, uvicorn) serves the dashboard. The
bench signs in as a browser does (the login form's CSRF token, then the session cookie),
with an admin key and with a plain key whose owner has 5% of the jobs, one keep-alive
connection each, and requests the pages in rounds (every page once per round, so a burst of
load on the machine falls on all pages alike): 3 warm-up rounds, then `--requests` timed
ones. Time to first byte is from sending a request until its status line and headers are
read; a page is rendered in full before its headers are sent, so it is the whole server
time. Printed: p50, p99 and p99 as a fraction of the 200 ms target, and the load average
around the run; `--explain` adds the plan (EXPLAIN ANALYZE, BUFFERS) of the main query of
each page over target, compiled from Conveyor's own query builders. Nothing is asserted.
A kept database (`--keep`) gets the job figures of the minutes since it was made, so the
overview's last hour is full again; its jobs and dead letters stay as they were.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import psycopg
from psycopg import sql

from _common import free_port, percentile, tail

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
CONVEYOR = str(ROOT / ".venv" / "bin" / "conveyor")
TARGET_MS = 200.0
WARMUP = 3
READY_TIMEOUT = 60.0
PLAIN_OWNER = "tenant-0001"

# Conveyor's declared queues first, then three an older configuration left in the ledger.
QUEUES = (
    "default", "email", "webhooks", "images", "payments", "reports", "scraping",
    "exports", "notifications", "billing",
)  # fmt: skip
_VERBS = {
    "default": ("sync_account", "recalculate_usage", "cleanup_sessions", "refresh_cache"),
    "email": ("send_welcome", "send_receipt", "send_digest", "send_password_reset"),
    "webhooks": ("deliver", "fan_out", "retry_endpoint", "verify_endpoint"),
    "images": ("make_thumbnail", "convert_to_webp", "strip_metadata", "resize_avatar"),
    "payments": ("charge_card", "refund", "capture", "reconcile_payouts"),
    "reports": ("build_monthly", "build_usage", "export_invoices", "build_audit"),
    "scraping": ("crawl_site", "fetch_page", "parse_sitemap", "check_robots"),
    "exports": ("export_csv", "export_xlsx", "export_pdf", "archive_export"),
    "notifications": ("push_mobile", "send_sms", "notify_slack", "digest_inbox"),
    "billing": ("issue_invoice", "apply_credit", "close_period", "sync_tax_rates"),
}
# 50 tasks; task i goes to QUEUES[i % 10], so the most common tasks are in different queues.
TASKS = tuple(
    f"app.{QUEUES[i % 10]}.{_VERBS[QUEUES[i % 10]][i // 10 % 4]}"
    + (f"_v{i // 40 + 1}" if i >= 40 else "")
    for i in range(50)
)
TASK_QUEUES = tuple(QUEUES[i % 10] for i in range(50))
# Error types, most common first, each with a ~80-character message (%s: a number).
ERRORS = (
    ("httpx.ReadTimeout", "timed out reading the response from api.partner.example after %s ms"),
    ("ConnectionRefusedError", "connection refused by 10.0.3.%s:443 while posting the payload"),
    ("app.errors.RateLimited", "partner answered 429 Too Many Requests; retry after %s seconds"),
    ("psycopg.errors.DeadlockDetected", "deadlock detected while updating account %s balance"),
    ("KeyError", "'customer_id' missing from the payload of order %s sent by the storefront"),
    ("ValueError", "invalid literal for int() with base 10 in row %s of the uploaded sheet"),
    ("smtplib.SMTPServerDisconnected", "the mail relay closed the connection after %s bytes"),
    ("PIL.UnidentifiedImageError", "cannot identify image file upload-%s.bin as any format"),
    ("app.errors.CardDeclined", "card declined by the issuer (insufficient funds), charge %s"),
    ("TimeoutError", "the export did not finish within its time limit after %s rows written"),
    ("httpx.HTTPStatusError", "server error 503 Service Unavailable for POST /v2/events/%s"),
    ("redis.exceptions.ConnectionError", "error while reading from redis:6379, attempt %s"),
    ("PermissionError", "permission denied writing /var/lib/app/exports/%s.csv to the volume"),
    ("json.JSONDecodeError", "expecting value: line 1 column %s (char 0) in partner reply"),
    ("app.errors.NotFound", "account %s was deleted before the job could run its last step"),
    ("botocore.exceptions.ClientError", "S3 PutObject AccessDenied for key reports/%s.xlsx"),
    ("ssl.SSLError", "certificate verify failed: hostname mismatch for shop-%s.example.org"),
    ("MemoryError", "out of memory while decoding an image of %s pixels in the pool process"),
    ("UnicodeDecodeError", "'utf-8' codec can't decode byte 0xe9 in position %s of the feed"),
    ("app.errors.Conflict", "version conflict: order %s was changed by another request"),
)
REASONS = (
    ("retries_exhausted", 0.70), ("permanent_error", 0.15), ("time_limit", 0.08),
    ("lost", 0.04), ("redelivered", 0.02), ("unregistered", 0.01),
)  # fmt: skip
TAGS = (
    "customer:acme", "priority:high", "campaign:black-friday", "region:eu-west-1",
    "batch:2026-11-27", "customer:globex", "source:api", "source:schedule", "region:us-east-1",
    "priority:low", "customer:initech", "import:shopify", "import:stripe", "beta", "vip",
    "customer:umbrella", "campaign:cyber-monday", "backfill", "region:ap-south-1", "retry:manual",
    "customer:hooli", "team:growth", "team:billing", "team:platform", "experiment:b",
    "experiment:a", "tenant-migration", "gdpr-export", "customer:stark", "load-test",
)  # fmt: skip
# Share of each queue in the per-minute figures, and the histograms' shapes (fractions of the
# attempts per bucket, DURATION_BOUNDS: 10 ms ... 900 s, +inf).
QUEUE_SHARE = (0.16, 0.14, 0.14, 0.10, 0.10, 0.06, 0.12, 0.06, 0.08, 0.04)
JOBS_PER_MINUTE = 24.0
WAIT_SHAPE = (0.05, 0.20, 0.20, 0.18, 0.12, 0.10, 0.07, 0.04, 0.02, 0.01, 0.005, 0.003, 0.0015,
              0.0005)  # fmt: skip
RUN_SHAPE = (0.01, 0.06, 0.10, 0.18, 0.20, 0.17, 0.12, 0.07, 0.04, 0.02, 0.007, 0.002, 0.0008,
             0.0002)  # fmt: skip


# --- the data ---------------------------------------------------------------------------------

JOBS_SQL = """
INSERT INTO conveyor_jobs (id, name, queue, owner, state, progress_current, attempts, args,
    kwargs, result, error_type, error_message, worker_host, created_at, started_at,
    finished_at, updated_at, events_pending)
SELECT md5('job' || n), (%(tasks)s::text[])[task + 1], (%(queues)s::text[])[task + 1], owner,
    state, 0, CASE WHEN state IN ('failed', 'dead') THEN 2 + n %% 3 ELSE 1 END,
    format('[%%s]', n %% 100000)::json,
    format('{"account_id": %%s, "source": "%%s"}', n %% 7919,
           (ARRAY['api', 'schedule', 'retry'])[1 + n %% 3])::json,
    CASE WHEN state = 'succeeded' THEN '{"ok": true}'::json END,
    CASE WHEN state IN ('failed', 'dead') THEN (%(errors)s::text[])[error + 1] END,
    CASE WHEN state IN ('failed', 'dead') THEN format((%(messages)s::text[])[error + 1], n %% 9973)
    END,
    CASE WHEN state NOT IN ('queued', 'cancelled') THEN 'worker-' || n %% 4 || '.bench' END,
    created, started, finished, coalesce(finished, started, created), false
FROM (
    SELECT n, task, owner, state, error, created,
        CASE WHEN state NOT IN ('queued', 'cancelled') THEN created + wait END AS started,
        CASE WHEN state IN ('succeeded', 'failed', 'dead') THEN created + wait + run END
            AS finished
    FROM (
        SELECT n, floor(50 * r1 ^ 2)::int AS task, floor(20 * r5 ^ 2)::int AS error,
            CASE WHEN r3 < 0.05 THEN NULL WHEN r3 < 0.10 THEN %(plain)s
                 ELSE 'tenant-' || lpad((2 + floor(999 * r4 ^ 2))::int::text, 4, '0') END
                AS owner,
            CASE WHEN r2 < 0.92 THEN 'succeeded' WHEN r2 < 0.96 THEN 'failed'
                 WHEN r2 < 0.975 THEN 'dead' WHEN r2 < 0.99 THEN 'cancelled'
                 WHEN r2 < 0.996 THEN 'queued' WHEN r2 < 0.998 THEN 'started'
                 ELSE 'retrying' END AS state,
            now() - CASE WHEN r2 >= 0.99 THEN r6 * interval '6 hours'
                         ELSE r6 * interval '30 days' END AS created,
            -ln(1 - r7) * interval '2 seconds' AS wait,
            -ln(1 - r8) * (1 + n %% 50) * interval '200 milliseconds' AS run
        FROM (
            -- OFFSET 0 keeps each random() one value per row, however often it is used.
            SELECT n, random() AS r1, random() AS r2, random() AS r3, random() AS r4,
                random() AS r5, random() AS r6, random() AS r7, random() AS r8
            FROM generate_series(1, %(count)s) AS n OFFSET 0
        ) AS draws
    ) AS picked
) AS timed
"""

TAGS_SQL = """
INSERT INTO conveyor_job_tags (job_id, tag, created_at)
SELECT id, (%(tags)s::text[])[1 + (pick + k * 7) %% %(tag_count)s], created_at
FROM (
    SELECT id, created_at, floor(%(tag_count)s * random() ^ 2)::int AS pick,
        1 + (random() < 0.3)::int AS how_many
    FROM conveyor_jobs WHERE random() < 0.1 OFFSET 0
) AS tagged, generate_series(1, how_many) AS k
"""

LETTERS_SQL = """
INSERT INTO conveyor_dead_letters (id, job_id, task_name, queue, owner, args, kwargs,
    error_type, error_message, error_traceback, reason, attempts, job_created_at, failed_at,
    replayed_job_id, replayed_at)
SELECT md5('letter' || n), md5('lost-job' || n), (%(tasks)s::text[])[task + 1],
    (%(queues)s::text[])[task + 1],
    CASE WHEN r3 < 0.05 THEN NULL WHEN r3 < 0.10 THEN %(plain)s
         ELSE 'tenant-' || lpad((2 + floor(999 * r4 ^ 2))::int::text, 4, '0') END,
    format('[%%s]', n %% 100000)::json, format('{"account_id": %%s}', n %% 7919)::json,
    (%(errors)s::text[])[error + 1], format((%(messages)s::text[])[error + 1], n %% 9973),
    'Traceback (most recent call last):' || chr(10) || '  File "app/tasks.py", line '
        || (40 + n %% 300) || ', in run' || chr(10) || (%(errors)s::text[])[error + 1],
    (SELECT reason FROM unnest(%(reasons)s::text[], %(reason_cumulative)s::float8[])
        AS r(reason, upto) WHERE r2 < upto ORDER BY upto LIMIT 1),
    3 + n %% 5, failed - interval '10 minutes' * r5, failed,
    CASE WHEN r6 < 0.05 THEN md5('replay' || n) END,
    CASE WHEN r6 < 0.05 THEN failed + interval '1 hour' END
FROM (
    SELECT n, r2, r3, r4, r5, r6, floor(50 * r1 ^ 2)::int AS task,
        floor(20 * r5 ^ 2)::int AS error, now() - r7 * interval '30 days' AS failed
    FROM (
        SELECT n, random() AS r1, random() AS r2, random() AS r3, random() AS r4,
            random() AS r5, random() AS r6, random() AS r7
        FROM generate_series(1, %(count)s) AS n OFFSET 0
    ) AS draws
) AS picked
"""


def _stats_sql() -> str:
    """Per (minute, queue): outcomes drawn around the queue's rate, histograms by shape."""
    waits = ", ".join(f"wait_{i}" for i in range(len(WAIT_SHAPE)))
    runs = ", ".join(f"run_{i}" for i in range(len(RUN_SHAPE)))
    spread = "(0.5 + random())"
    wait_values = ", ".join(
        f"floor(attempts * {share} * {spread} + random())::bigint" for share in WAIT_SHAPE
    )
    run_values = ", ".join(
        f"floor(attempts * {share} * {spread} + random())::bigint" for share in RUN_SHAPE
    )
    # Built from the constants above only, never from input.
    return f"""
INSERT INTO conveyor_job_stats (minute, queue, succeeded, failed, retried, dead, cancelled,
    wait_sum, run_sum, {waits}, {runs})
SELECT minute, queue, succeeded, failed, retried, dead, cancelled,
    attempts * 0.9 * {spread}, attempts * 4.5 * {spread}, {wait_values}, {run_values}
FROM (
    SELECT minute, queue, succeeded, failed, retried, dead, cancelled,
        succeeded + failed + cancelled AS attempts
    FROM (
        SELECT minute, queue, floor(rate * 0.92 * 2 * random())::bigint AS succeeded,
            floor(rate * 0.06 * 2 * random() + random())::bigint AS failed,
            floor(rate * 0.03 * 2 * random() + random())::bigint AS retried,
            floor(rate * 0.015 * 2 * random() + random() * 0.5)::bigint AS dead,
            floor(rate * 0.01 * 2 * random() + random() * 0.5)::bigint AS cancelled
        FROM generate_series(%(first)s::timestamptz, date_trunc('minute', now()),
                             interval '1 minute') AS minute,
            unnest(%(queues)s::text[], %(rates)s::float8[]) AS q(queue, rate)
        OFFSET 0
    ) AS counted
) AS totalled
"""  # noqa: S608


def _params() -> dict[str, Any]:
    cumulative, total = [], 0.0
    for _, share in REASONS:
        total += share
        cumulative.append(total)
    cumulative[-1] = 1.01  # random() < 1: the last reason takes what rounding leaves
    return {
        "tasks": list(TASKS),
        "queues": list(TASK_QUEUES),
        "errors": [name for name, _ in ERRORS],
        "messages": [message for _, message in ERRORS],
        "reasons": [reason for reason, _ in REASONS],
        "reason_cumulative": cumulative,
        "tags": list(TAGS),
        "tag_count": len(TAGS),
        "plain": PLAIN_OWNER,
    }


def add_stats(connection: psycopg.Connection[Any], first: datetime) -> None:
    connection.execute(
        _stats_sql(),
        {
            "first": first,
            "queues": list(QUEUES),
            "rates": [share * JOBS_PER_MINUTE for share in QUEUE_SHARE],
        },
    )


def generate(url: str, jobs: int, letters: int) -> None:
    params = _params()
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute("SELECT setseed(0.42)")
        steps: list[tuple[str, Callable[[], object]]] = [
            ("jobs", lambda: connection.execute(JOBS_SQL, {**params, "count": jobs})),
            ("tags", lambda: connection.execute(TAGS_SQL, params)),
            ("dead letters", lambda: connection.execute(LETTERS_SQL, {**params, "count": letters})),
            (
                "job figures",
                lambda: add_stats(connection, datetime.now(UTC) - timedelta(days=30)),
            ),
            ("vacuum analyze", lambda: connection.execute("VACUUM ANALYZE")),
        ]
        for label, step in steps:
            began = time.perf_counter()
            step()
            print(f"  {label}: {time.perf_counter() - began:.1f}s", flush=True)
        for table in ("conveyor_jobs", "conveyor_job_tags", "conveyor_dead_letters",
                      "conveyor_job_stats"):  # fmt: skip
            query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))
            count = connection.execute(query).fetchone()
            print(f"  {table}: {count[0] if count else 0:,} rows")


def counts(url: str) -> tuple[int, int] | None:
    try:
        with psycopg.connect(url, connect_timeout=5) as connection:
            row = connection.execute(
                "SELECT (SELECT count(*) FROM conveyor_jobs),"
                " (SELECT count(*) FROM conveyor_dead_letters)"
            ).fetchone()
    except psycopg.Error:
        return None
    return (int(row[0]), int(row[1])) if row else None


def top_up_stats(url: str) -> None:
    """A kept database's figures end when it was made: add the minutes since, so the
    overview's last hour is as full as on the first run."""
    with psycopg.connect(url, autocommit=True) as connection:
        row = connection.execute("SELECT max(minute) FROM conveyor_job_stats").fetchone()
        newest = row[0] if row else None
        if newest is not None:
            add_stats(connection, newest + timedelta(minutes=1))
            connection.execute("ANALYZE conveyor_job_stats")


# --- the server -------------------------------------------------------------------------------


def conveyor(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [CONVEYOR, *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"conveyor {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


@contextmanager
def api_server(env: dict[str, str], log: Path) -> Iterator[str]:
    port = free_port()
    with log.open("wb") as output:
        process = subprocess.Popen(
            [CONVEYOR, "api", "--host", "127.0.0.1", "--port", str(port)],
            env=env, stdout=output, stderr=subprocess.STDOUT,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            if process.poll() is not None:
                raise SystemExit(f"conveyor api exited:\n{tail(log)}")
            try:
                if httpx.get(f"{base}/dashboard/login", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"conveyor api not ready in {READY_TIMEOUT:.0f}s:\n{tail(log)}")
            time.sleep(0.2)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def sign_in(base: str, key: str) -> httpx.Client:
    """A client holding a dashboard session, signed in through the form as a browser is."""
    client = httpx.Client(base_url=base, headers={"accept": "text/html"}, timeout=30)
    form = client.get("/dashboard/login")
    found = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
    if form.status_code != 200 or found is None:
        raise SystemExit(f"no login form: {form.status_code} {form.text[:300]}")
    answer = client.post(
        "/dashboard/login",
        data={"api_key": key, "csrf_token": found.group(1), "next": "/dashboard/"},
    )
    if answer.status_code != 303:
        raise SystemExit(f"sign-in refused: {answer.status_code} {answer.text[:300]}")
    return client


class PageError(Exception):
    """A page answered something else than 200: reported in its row, the run goes on."""


def first_byte(client: httpx.Client, path: str) -> tuple[float, int]:
    """Seconds from sending the request to having its headers; and the body's size."""
    request = client.build_request("GET", path)
    began = time.perf_counter()
    try:
        response = client.send(request, stream=True)  # returns once the headers are read
    except httpx.TransportError as exc:
        # The server may close a connection after an error: not this page's time.
        raise PageError(f"{type(exc).__name__}: {exc}") from None
    elapsed = time.perf_counter() - began
    body = response.read()
    response.close()
    if response.status_code != 200:
        raise PageError(f"{response.status_code} {body[:120].decode(errors='replace')}")
    return elapsed, len(body)


def measure(
    clients: dict[str, httpx.Client], listed: list[tuple[str, str, str]], requests: int
) -> tuple[dict[int, list[float]], dict[int, int], dict[int, str]]:
    """Rounds of one request to every page, so a burst of load on the machine falls on all
    pages alike: per page, sorted seconds, body size, or why it failed."""
    seconds: dict[int, list[float]] = {index: [] for index in range(len(listed))}
    sizes: dict[int, int] = {}
    failures: dict[int, str] = {}
    for round_ in range(WARMUP + requests):
        for index, (who, _, path) in enumerate(listed):
            if index in failures:
                continue
            try:
                elapsed, sizes[index] = first_byte(clients[who], path)
            except PageError as exc:
                failures[index] = str(exc)
                continue
            if round_ >= WARMUP:
                seconds[index].append(elapsed)
    return {index: sorted(values) for index, values in seconds.items()}, sizes, failures


# --- the plans of slow pages --------------------------------------------------------------------


def main_queries(who: str, path: str) -> list[Any]:
    """The statements behind a page, built by Conveyor's own code (what the app sends)."""
    from sqlalchemy import func, select

    from conveyor.core.models import DeadLetter
    from conveyor.core.search import MAX_COUNT, DeadLetterFilter, JobFilter
    from conveyor.dashboard.views import PAGE_SIZE, letter_filter

    params = dict(parse_qsl(urlsplit(path).query))
    if path.startswith("/dashboard/dead-letters/replay-matching"):
        where = letter_filter(params, before=datetime.now(UTC))
        matching = select(DeadLetter.id).where(*where.conditions()).limit(MAX_COUNT + 1)
        return [select(func.count()).select_from(matching.subquery())]
    if path.startswith("/dashboard/dead-letters"):
        where_letters: DeadLetterFilter = letter_filter(params)
        query = select(DeadLetter).where(*where_letters.conditions())
        order = (DeadLetter.failed_at.desc(), DeadLetter.id.desc())
        return [query.order_by(*order).limit(PAGE_SIZE + 1)]
    if path.startswith("/dashboard/jobs") or path.startswith("/api/v1/jobs"):
        owner = PLAIN_OWNER if who == "plain" else params.get("owner")
        created = {
            name: datetime.fromisoformat(params[name]).replace(tzinfo=UTC)
            for name in ("created_from", "created_to")
            if name in params
        }
        where_jobs = JobFilter(
            state=params.get("state"), queue=params.get("queue"), task=params.get("task"),
            owner=owner, tag=params.get("tag"), **created,
        )  # fmt: skip
        return [where_jobs.query().limit(PAGE_SIZE + 1)]
    raise ValueError(f"no query known for {path}")


def explain(url: str, who: str, page: str, path: str) -> None:
    from sqlalchemy import create_engine

    # Compiles only, never connects; "named" so a LIKE pattern's % is not doubled.
    dialect = create_engine("postgresql+psycopg://", paramstyle="named").dialect
    statements = main_queries(who, path)
    with psycopg.connect(url) as connection:
        for statement in statements:
            text = str(statement.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))
            print(f"\n  {page}:\n    {' '.join(text.split())}")
            # The app's own statement, compiled by SQLAlchemy from the page's filters.
            query = sql.SQL("EXPLAIN (ANALYZE, BUFFERS) ") + sql.SQL(text)
            plan = connection.execute(query).fetchall()
            for (line,) in plan:
                print(f"      {line}")


def overview_statements(env: dict[str, str], who: str, queue: str | None) -> None:
    """The overview issues several small statements: each one's time, in this process, from
    the median of 10 builds of the page's context (no HTTP, no rendering)."""
    os.environ.update({name: env[name] for name in ("CONVEYOR_DATABASE_URL", "CONVEYOR_REDIS_URL")})
    from sqlalchemy import event

    from conveyor.core.db import get_engine, session_scope
    from conveyor.dashboard.sessions import SignedIn
    from conveyor.dashboard.views import overview

    timings: list[tuple[float, str, Any]] = []

    def before(connection: Any, *_: Any) -> None:
        connection.info["bench_began"] = time.perf_counter()

    def after(connection: Any, _: Any, statement: str, parameters: Any, *__: Any) -> None:
        began = connection.info.pop("bench_began")
        timings.append((time.perf_counter() - began, statement, parameters))

    engine = get_engine()
    event.listen(engine, "before_cursor_execute", before)
    event.listen(engine, "after_cursor_execute", after)
    owner, admin = (PLAIN_OWNER, False) if who == "plain" else ("bench", True)
    signed_in = SignedIn(key_id="bench", key_name="bench", owner=owner, is_admin=admin, csrf="")
    params = {"queue": queue} if queue else {}
    builds = []
    with session_scope() as session:
        for _ in range(11):
            timings.clear()
            began = time.perf_counter()
            overview(session, signed_in, params)
            builds.append((time.perf_counter() - began, list(timings)))
    event.remove(engine, "before_cursor_execute", before)
    event.remove(engine, "after_cursor_execute", after)
    total, statements = sorted(builds[1:], key=lambda build: build[0])[5]
    in_sql = sum(seconds for seconds, _, _ in statements)
    print(
        f"\n  overview{f' ?queue={queue}' if queue else ''}: context built in "
        f"{total * 1000:.1f} ms (median of 10), {in_sql * 1000:.1f} ms of it in "
        f"{len(statements)} statements:"
    )
    now = datetime.now(UTC)
    for seconds, statement, parameters in sorted(statements, key=lambda item: -item[0])[:8]:
        table = re.search(r"FROM (\w+)", statement)
        grouped = re.search(r"GROUP BY ([\w.]+)", statement)
        since = [
            f"{(now - value).total_seconds() / 3600:.0f} h"
            for value in (parameters or {}).values()
            if isinstance(value, datetime)
        ]
        print(
            f"    {seconds * 1000:6.1f} ms  {table.group(1) if table else '?'}"
            f"  {statement.count('sum(')} sums"
            f"{f'  by {grouped.group(1)}' if grouped else ''}"
            f"{f'  from {since[0]} ago' if since else ''}"
        )


# --- the run ------------------------------------------------------------------------------------


def pages(
    tasks: tuple[str, str], tag: str, error: str, words: tuple[str, str]
) -> list[tuple[str, str, str]]:
    """(key, label, path) of every page timed."""
    now = datetime.now(UTC).replace(microsecond=0, tzinfo=None)
    start, end = (now - timedelta(days=3)).isoformat(), (now - timedelta(days=2)).isoformat()
    common, task = tasks
    word, typo = words
    return [
        ("admin", "overview", "/dashboard/"),
        ("admin", "overview ?queue=email", "/dashboard/?queue=email"),
        ("plain", "overview (plain key)", "/dashboard/"),
        ("admin", "jobs, no filter (the Jobs link)", "/dashboard/jobs"),
        ("admin", "jobs ?state=failed", "/dashboard/jobs?state=failed"),
        ("admin", "jobs ?state=failed&queue=email", "/dashboard/jobs?state=failed&queue=email"),
        ("admin", f"jobs ?task={task}", f"/dashboard/jobs?task={task}"),
        ("admin", f"jobs ?tag={tag}", f"/dashboard/jobs?tag={tag}"),
        ("admin", "jobs ?owner=tenant-0042", "/dashboard/jobs?owner=tenant-0042"),
        (
            "admin",
            "jobs ?created 3 to 2 days ago",
            f"/dashboard/jobs?created_from={start}&created_to={end}",
        ),
        ("plain", "jobs (plain key)", "/dashboard/jobs"),
        ("plain", "jobs ?state=succeeded (plain key)", "/dashboard/jobs?state=succeeded"),
        ("admin", "dead letters", "/dashboard/dead-letters"),
        ("admin", f"dead letters ?task={common}", f"/dashboard/dead-letters?task={common}"),
        (
            "admin",
            f"dead letters ?error_type={error}",
            f"/dashboard/dead-letters?error_type={error}",
        ),
        (
            "admin",
            "dead letters ?queue=email&reason=retries_exhausted",
            "/dashboard/dead-letters?queue=email&reason=retries_exhausted",
        ),
        ("admin", f"dead letters ?text={word}", f"/dashboard/dead-letters?text={word}"),
        # A word in no message (a typo): nothing stops the scan early.
        ("admin", f"dead letters ?text={typo}", f"/dashboard/dead-letters?text={typo}"),
        (
            "admin",
            f"replay-matching count ?task={common}",
            f"/dashboard/dead-letters/replay-matching?task={common}",
        ),
        ("api", "API /api/v1/jobs?state=failed", "/api/v1/jobs?state=failed"),
    ]


def load() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--dead-letters", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=100, help="timed requests per page")
    parser.add_argument("--keep", action="store_true", help="keep the database and reuse it")
    parser.add_argument("--explain", action="store_true", help="plans of pages over target")
    parser.add_argument("--database", default="conveyor_bench_dashboard")
    parser.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/8")
    args = parser.parse_args()

    server = args.postgres_url.rsplit("/", 1)[0]
    url = f"{server}/{args.database}"
    env = {
        **os.environ,
        "CONVEYOR_DATABASE_URL": url.replace("postgresql://", "postgresql+psycopg://", 1),
        "CONVEYOR_REDIS_URL": args.redis_url,
        "CONVEYOR_LOG_LEVEL": "WARNING",
    }
    env.pop("CONVEYOR_BOOTSTRAP_API_KEY", None)
    name = sql.Identifier(args.database)
    drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name)
    admin = psycopg.connect(args.postgres_url, autocommit=True, connect_timeout=5)
    try:
        if args.keep and counts(url) == (args.jobs, args.dead_letters):
            print(f"reusing {args.database}: {args.jobs:,} jobs, {args.dead_letters:,} letters")
            top_up_stats(url)
        else:
            admin.execute(drop)
            admin.execute(sql.SQL("CREATE DATABASE {}").format(name))
            conveyor(env, "db", "upgrade")
            print(f"generating {args.jobs:,} jobs and {args.dead_letters:,} dead letters")
            began = time.perf_counter()
            generate(url, args.jobs, args.dead_letters)
            print(f"generated in {time.perf_counter() - began:.1f}s", flush=True)
        admin_key = conveyor(env, "keys", "create", "bench", "--admin").strip().splitlines()[-1]
        plain_key = conveyor(
            env, "keys", "create", "bench-tenant", "--owner", PLAIN_OWNER
        ).strip().splitlines()[-1]  # fmt: skip
        run(args, env, url, admin_key, plain_key)
    finally:
        if not args.keep:
            admin.execute(drop)
        admin.close()


def run(
    args: argparse.Namespace, env: dict[str, str], url: str, admin_key: str, plain_key: str
) -> None:
    # What to search for: the most common task, another, a tag, an error type, two words.
    with psycopg.connect(url) as connection:
        common = connection.execute(
            "SELECT task_name FROM conveyor_dead_letters GROUP BY 1 ORDER BY count(*) DESC LIMIT 1"
        ).fetchone()
    listed = pages(
        (common[0] if common else TASKS[0], TASKS[37]),
        TAGS[4],
        ERRORS[3][0],
        ("deadlock", "deadlok"),
    )
    with tempfile.TemporaryDirectory(prefix="conveyor-bench-") as work:
        log = Path(work) / "api.log"
        with api_server(env, log) as base:
            clients = {"admin": sign_in(base, admin_key), "plain": sign_in(base, plain_key)}
            clients["api"] = httpx.Client(
                base_url=base, headers={"authorization": f"Bearer {admin_key}"}, timeout=30
            )
            print(f"\nload average before: {load()} (1, 5, 15 min; {os.cpu_count()} CPUs)")
            began = time.perf_counter()
            seconds, sizes, failures = measure(clients, listed, args.requests)
            took = time.perf_counter() - began
            print(f"load average after:  {load()} ({args.requests} rounds in {took:.0f}s)\n")
            for client in clients.values():
                client.close()
            if failures:
                print(f"the API's log, last lines:\n{tail(log, 40)}\n")
    print(f"{'page':<56} {'p50 ms':>7} {'p99 ms':>7} {'KB':>5}  p99 / 200 ms")
    slow = []
    for index, (who, label, path) in enumerate(listed):
        if index in failures:
            print(f"{label:<56} failed: {failures[index]}")
            continue
        p50 = percentile(seconds[index], 0.50) * 1000
        p99 = percentile(seconds[index], 0.99) * 1000
        verdict = "under" if p99 < TARGET_MS else "OVER"
        print(
            f"{label:<56} {p50:>7.1f} {p99:>7.1f} {sizes[index] / 1024:>5.0f}  "
            f"{p99 / TARGET_MS:.2f}× target ({verdict})",  # noqa: RUF001
        )
        if p99 >= TARGET_MS:
            slow.append((who, label, path))
    failed = len(failures)
    under = len(listed) - len(slow) - failed
    print(f"\n{under} of {len(listed)} pages under {TARGET_MS:.0f} ms at p99, {failed} failed")
    if args.explain:
        for who, label, path in slow:
            if path.startswith("/dashboard/?") or path == "/dashboard/":
                queue = dict(parse_qsl(urlsplit(path).query)).get("queue")
                overview_statements(env, who, queue)
            else:
                explain(url, who, label, path)


if __name__ == "__main__":
    main()
