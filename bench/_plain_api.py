"""The plain pattern's API: what a FastAPI + Celery user would write for a durable submit.

`POST /jobs` checks a bearer token against a constant (`BENCH_API_KEY`, read at start),
INSERTs the job's row and commits, then `delay()`s the task and answers 202 with the id.
A sync route (FastAPI runs it in its threadpool) with one PostgreSQL connection per thread:
psycopg_pool is not installed here.

    BENCH_REDIS_URL=... BENCH_PLAIN_DATABASE_URL=... uvicorn _plain_api:app
"""

from __future__ import annotations

import os
import threading
import uuid
from datetime import UTC, datetime
from typing import Annotated

import psycopg
from fastapi import FastAPI, Header, HTTPException, status
from psycopg.types.json import Jsonb
from pydantic import BaseModel

from _plain_tasks import DATABASE_URL, run

TOKEN = os.environ["BENCH_API_KEY"]

app = FastAPI()
_local = threading.local()


def connection() -> psycopg.Connection:
    conn = getattr(_local, "conn", None)
    if conn is None or conn.closed:
        conn = _local.conn = psycopg.connect(DATABASE_URL)
    return conn


class JobRequest(BaseModel):
    steps: int = 1
    step_seconds: float = 0


@app.get("/health")
def health() -> dict[str, str]:
    return {"status": "ok"}


@app.post("/jobs", status_code=status.HTTP_202_ACCEPTED)
def submit(body: JobRequest, authorization: Annotated[str, Header()] = "") -> dict[str, str]:
    if authorization != f"Bearer {TOKEN}":
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "bad token")
    job_id = uuid.uuid4().hex
    conn = connection()
    with conn.transaction():
        conn.execute(
            "INSERT INTO plain_jobs (id, name, args, state, created_at) "
            "VALUES (%s, %s, %s, 'queued', %s)",
            (job_id, run.name, Jsonb(body.model_dump()), datetime.now(UTC)),
        )
    # After the commit, so the worker always finds the row.
    run.delay(job_id, **body.model_dump())
    return {"job_id": job_id, "status": "queued"}
