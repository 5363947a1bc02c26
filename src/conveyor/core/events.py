"""Job events on Redis pub/sub, which the API turns into server-sent events."""

from __future__ import annotations

import json
import logging
from typing import Any

import redis

from conveyor.core.redis_client import get_redis, job_channel

log = logging.getLogger(__name__)


def publish_job(snapshot: dict[str, Any]) -> None:
    """Best effort: the ledger is the truth, and SSE clients re-read it if they miss one."""
    try:
        get_redis().publish(job_channel(snapshot["id"]), json.dumps(snapshot, default=str))
    except redis.RedisError as exc:
        log.warning("could not publish job event for %s: %s", snapshot.get("id"), exc)
