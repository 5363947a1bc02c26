"""The plain pattern's Celery side: one task that marks its own row succeeded.

A default Celery app on `BENCH_REDIS_URL` (JSON, queue "celery", no result backend: the
row in PostgreSQL is the record). `BENCH_PLAIN_DATABASE_URL` is the database of the table.

    python -m celery -A _plain_tasks worker -c 1
"""

from __future__ import annotations

import os

import psycopg
from celery import Celery

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/15")
DATABASE_URL = os.environ.get(
    "BENCH_PLAIN_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/conveyor_bench_submit"
)

app = Celery("plain", broker=REDIS_URL)
app.conf.update(task_serializer="json", accept_content=["json"])

_conn: psycopg.Connection | None = None
_conn_pid = 0


def connection() -> psycopg.Connection:
    """One connection per process: a forked pool child must not share its parent's socket."""
    global _conn, _conn_pid
    if _conn is None or _conn.closed or _conn_pid != os.getpid():
        _conn = psycopg.connect(DATABASE_URL, autocommit=True)
        _conn_pid = os.getpid()
    return _conn


def create_table(url: str = DATABASE_URL) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS plain_jobs (id text PRIMARY KEY, name text NOT NULL, "
            "args jsonb NOT NULL, state text NOT NULL, created_at timestamptz NOT NULL)"
        )


@app.task(name="plain.run")
def run(job_id: str, steps: int = 1, step_seconds: float = 0) -> None:
    connection().execute("UPDATE plain_jobs SET state = 'succeeded' WHERE id = %s", (job_id,))
