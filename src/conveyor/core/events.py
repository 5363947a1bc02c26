"""Job events on Redis pub/sub, which the API turns into server-sent events."""

from __future__ import annotations

import json
import logging
from typing import Any

import redis

from conveyor.core.redis_client import get_redis, job_channel

log = logging.getLogger(__name__)


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
    payload = event_payload(snapshot)
    try:
        get_redis().publish(job_channel(snapshot["id"]), json.dumps(payload, default=str))
    except redis.RedisError as exc:
        log.warning("could not publish job event for %s: %s", snapshot.get("id"), exc)
