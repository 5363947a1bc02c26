"""Reports over a million rows: streamed (the reports workload) against the naive way.

    .venv/bin/python bench/reports.py [--rows 1000000] [--postgres-url URL]

A temporary PostgreSQL database (created and dropped here) gets `--rows` jobs in November
2026, made by one INSERT ... SELECT over generate_series. Each run is a fresh process
building the `jobs` report of that month:

  - streamed: `service.build`, the worker's code: a server-side cursor read in chunks of
    CONVEYOR_REPORT_CHUNK_ROWS, each chunk written as it comes (CSV; XLSX in constant-memory
    mode), the file then copied into storage.
  - naive: every job loaded through the ORM into a list, turned into rows, then written
    (CSV; XLSX with xlsxwriter's default, all cells in memory).

Rows/s is rows over the whole build; peak memory is the process's peak resident set
(ru_maxrss), imports included, as a worker's would be.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import date
from pathlib import Path

import psycopg
import sqlalchemy as sa

START, END = date(2026, 11, 1), date(2026, 11, 30)
DEADLINE = 900  # seconds for one run; past it the bench stops with what it has


def fill(url: str, rows: int) -> None:
    from conveyor.core.models import Base, Job

    engine = sa.create_engine(url)
    Base.metadata.create_all(engine, tables=[Job.__table__])
    with engine.begin() as connection:
        connection.execute(
            sa.text(
                """
                INSERT INTO conveyor_jobs (id, name, queue, owner, state, progress_current,
                    attempts, args, kwargs, created_at, started_at, finished_at, updated_at,
                    events_pending)
                SELECT md5(n::text), 'bench.task_' || (n % 7), 'queue_' || (n % 3), 'bench',
                    (ARRAY['succeeded', 'failed', 'dead'])[1 + n % 3], 0, 1, '[]', '{}',
                    t, t + (n % 997) * interval '1 millisecond',
                    t + (n % 997 + n % 4999) * interval '1 millisecond', t, false
                FROM (SELECT n, timestamptz '2026-11-01 00:00:00+00'
                        + (n % 2592000) * interval '1 second' AS t
                      FROM generate_series(1, :rows) AS n) AS source
                """
            ),
            {"rows": rows},
        )
        connection.execute(sa.text("ANALYZE conveyor_jobs"))
    engine.dispose()


def child(mode: str, fmt: str, url: str) -> None:
    """One build in this process; prints its figures as JSON."""
    from sqlalchemy.orm import Session

    from conveyor.core.models import Job
    from conveyor.core.storage import LocalStorage
    from conveyor.workloads.reports import service
    from conveyor.workloads.reports.formats import Content, CsvFormat, XlsxFormat
    from conveyor.workloads.reports.kinds.jobs import JobsReport, _seconds
    from conveyor.workloads.reports.models import Report
    from conveyor.workloads.reports.period import Period
    from conveyor.workloads.reports.settings import ReportsSettings

    engine = sa.create_engine(url)
    report = Report(
        id=uuid.uuid4().hex, owner="bench", kind="jobs", start=START, end=END,
        timezone="UTC", format=fmt, email_to=[],
    )  # fmt: skip
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="conveyor-bench-") as tmp:
        if mode == "streamed":
            built = service.build(engine, LocalStorage(Path(tmp)), report, ReportsSettings())
            count, size = built.rows, built.size
        else:
            period = Period(START, END)
            first, after = period.bounds()
            with Session(engine) as session:
                jobs = session.scalars(
                    sa.select(Job).where(
                        Job.owner == "bench", Job.created_at >= first, Job.created_at < after
                    )
                ).all()
                rows = [
                    (job.id, job.queue, job.name, job.state, period.local(job.created_at),
                     period.local(job.started_at), period.local(job.finished_at),
                     _seconds(job.started_at, job.created_at),
                     _seconds(job.finished_at, job.started_at))
                    for job in jobs
                ]  # fmt: skip
            definition = JobsReport()
            summary = definition.summary(period, "bench", len(rows))
            writer = CsvFormat() if fmt == "csv" else XlsxFormat(constant_memory=False)
            target = Path(tmp) / f"report.{fmt}"
            with engine.connect() as connection:

                def finish() -> list[tuple[object, ...]]:
                    summary.add(rows)
                    return summary.finish(connection)

                writer.write(target, Content(definition, period, "bench", iter([rows]), finish))
            count, size = len(rows), target.stat().st_size
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"rows": count, "seconds": seconds, "peak_mb": peak, "size": size}))


def measure(mode: str, fmt: str, url: str) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, __file__, "--child", mode, fmt, "--postgres-url", url],
        capture_output=True, text=True, timeout=DEADLINE, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"{mode} {fmt} failed:\n{done.stderr[-3000:]}")
    figures: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get(
            "CONVEYOR_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
    )
    parser.add_argument("--child", nargs=2, metavar=("MODE", "FORMAT"))
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], args.postgres_url)
        return
    admin = psycopg.connect(args.postgres_url, autocommit=True, connect_timeout=5)
    name = f"conveyor_bench_reports_{uuid.uuid4().hex[:8]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    url = args.postgres_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    url = f"{url}/{name}"
    try:
        began = time.perf_counter()
        fill(url, args.rows)
        print(f"{args.rows:,} jobs generated in {time.perf_counter() - began:.1f}s")
        print(
            f"{'format':<6} {'mode':<9} {'rows/s':>10} {'seconds':>8} {'peak MB':>8} {'file MB':>8}"
        )
        results: dict[tuple[str, str], dict[str, float]] = {}
        for fmt in ("csv", "xlsx"):
            for mode in ("streamed", "naive"):
                figures = measure(mode, fmt, url)
                results[(fmt, mode)] = figures
                assert figures["rows"] == args.rows, figures
                print(
                    f"{fmt:<6} {mode:<9} {figures['rows'] / figures['seconds']:>10,.0f} "
                    f"{figures['seconds']:>8.1f} {figures['peak_mb']:>8.0f} "
                    f"{figures['size'] / 1_048_576:>8.1f}",
                    flush=True,
                )
        for fmt in ("csv", "xlsx"):
            fast, slow = results[(fmt, "streamed")], results[(fmt, "naive")]
            speed = slow["seconds"] / fast["seconds"]
            memory = fast["peak_mb"] / slow["peak_mb"]
            print(
                f"{fmt}: streamed is {speed:.1f}x the naive rows/s at {memory:.2f} of its "
                f"peak memory (1/{1 / memory:.1f}); streamed peak {fast['peak_mb']:.0f} MB "
                f"{'<' if fast['peak_mb'] < 200 else '>='} 200 MB"
            )
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


if __name__ == "__main__":
    main()
