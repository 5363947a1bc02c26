"""Job events on Redis pub/sub, which the API turns into server-sent events.

Events are published only while someone follows them: an API process with an open event
stream (a client of `GET /api/v1/jobs/{id}/events`, a dashboard job page) keeps
`WATCHING_KEY` alive, and workers look at it at most every `CHECK_SECONDS`. A stream opened
meanwhile may miss that moment's events; it reads the ledger again once that has passed
(api/job_stream.py), so it shows every state, later by at most that fraction of a second.
With nobody watching, a job costs no PUBLISH at all.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

import redis

from conveyor.core.redis_client import get_redis, job_channel

log = logging.getLogger(__name__)

WATCHING_KEY = "conveyor:events:watching"
# The key outlives a refresh missed by a busy API process several times over.
WATCHING_TTL_SECONDS = 5.0
# How stale a worker's answer to "is anyone watching?" may be.
CHECK_SECONDS = 0.1


class _Watching:
    """This process's cached answer: (process id, answer, when to ask again)."""

    pid = 0
    answer = True
    until = 0.0


def someone_watching() -> bool:
    """Whether any API process follows job events now (cached for CHECK_SECONDS)."""
    now = time.monotonic()
    if _Watching.pid == os.getpid() and now < _Watching.until:
        return _Watching.answer
    try:
        answer = bool(get_redis().exists(WATCHING_KEY))
    except redis.RedisError:
        answer = True  # publishing will say what is wrong
    _Watching.pid, _Watching.answer, _Watching.until = os.getpid(), answer, now + CHECK_SECONDS
    return answer


def event_payload(snapshot: dict[str, Any]) -> dict[str, Any]:
    """A job snapshot as an event carries it: the error's type and message, not its traceback,
    which would repeat in every progress event (`GET /api/v1/jobs/{id}` still has it)."""
    error = snapshot.get("error")
    if not isinstance(error, dict) or "traceback" not in error:
        return snapshot
    trimmed = {key: value for key, value in error.items() if key != "traceback"}
    return {**snapshot, "error": trimmed}


def publish_job(snapshot: dict[str, Any]) -> None:
    """Best effort: the ledger is the truth, and SSE clients re-read it if they miss one."""
    if not someone_watching():
        return
    payload = event_payload(snapshot)
    try:
        get_redis().publish(job_channel(snapshot["id"]), json.dumps(payload, default=str))
    except redis.RedisError as exc:
        log.warning("could not publish job event for %s: %s", snapshot.get("id"), exc)
