"""Unique jobs (Laravel's ShouldBeUnique): one queued-or-running job per unique key.

A task opts in with one line:

    class Sync(ConveyorTask):
        unique_for = 60                      # seconds the claim lives at most
        unique_key = "{customer_id}"         # optional; a template or f(args, kwargs)

or a caller with `Submission(unique_key="...", unique_for=60)`. Without a key, the job's
arguments are the key: the same task with the same arguments is the same job.

`submit` claims the key in Redis (SET NX, key -> job id, with the TTL) before it records the
job; a second submit finds the claim and returns the existing job instead of queueing
another. The worker releases the claim when the job reaches a final state (succeeded, dead,
cancelled), and only if the claim still names that job; a crashed worker's claim expires.
Keys are per task and per owner, so one tenant never receives another tenant's job.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from celery import Celery
from redis.exceptions import RedisError

from conveyor.core.db import session_scope
from conveyor.core.locks import LuaScript, args_digest, raw_setting, render_key
from conveyor.core.models import TERMINAL_STATES, Job
from conveyor.core.redis_client import get_redis

log = logging.getLogger(__name__)

UNIQUE_PREFIX = "conveyor:unique:"
# job id -> its claim, so the claim can be released knowing only the job id.
JOB_PREFIX = "conveyor:unique-job:"
# Message header telling the worker that this job holds a claim to release when it ends.
HEADER = "conveyor_unique"
# How long a second submitter waits for the first one's ledger row to be committed before
# deciding that submitter died between its claim and its commit.
COMMIT_GRACE_SECONDS = 5.0
POLL_SECONDS = 0.01

# Claim KEYS[1] for ARGV[1] unless another job holds it (ARGV[3]: a holder we may replace).
# Returns nil when claimed, else the holding job id.
_CLAIM = LuaScript(
    """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[3] then return holder end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('SET', KEYS[2], KEYS[1], 'PX', ARGV[2])
return false
"""
)
# Release the claim of job ARGV[1] if the claim still names it.
_RELEASE = LuaScript(
    """
local claim = redis.call('GET', KEYS[1])
if not claim then return 0 end
redis.call('DEL', KEYS[1])
if redis.call('GET', claim) == ARGV[1] then return redis.call('DEL', claim) end
return 0
"""
)


@dataclass(frozen=True)
class UniqueSpec:
    key: str  # the Redis key of the claim
    ttl: float  # seconds


def spec_for(
    task_name: str,
    args: list[Any] | tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    owner: str | None = None,
    unique_key: str | None = None,
    unique_for: float | None = None,
    app: Celery | None = None,
) -> UniqueSpec | None:
    """The claim a submission needs, from its own settings or its task class's; None if none."""
    task = app.tasks.get(task_name) if app is not None else None
    ttl = unique_for if unique_for is not None else getattr(task, "unique_for", None)
    key_setting: Any = unique_key if unique_key is not None else raw_setting(task, "unique_key")
    if ttl is None:
        if unique_key is not None:
            raise ValueError("unique_key needs unique_for: how long the claim may live")
        return None
    if ttl <= 0:
        raise ValueError(f"unique_for must be positive, got {ttl}")
    if key_setting is None:
        key = args_digest(args, kwargs)
    elif unique_key is not None:
        key = unique_key  # given by the caller: already the key, not a template
    else:
        extra = {"owner": owner}
        key = render_key(key_setting, args, kwargs, task=task, extra=extra, what="unique_key")
    return UniqueSpec(key=f"{UNIQUE_PREFIX}{task_name}:{owner or '-'}:{key}", ttl=float(ttl))


def claim(spec: UniqueSpec, job_id: str, *, replace: str | None = None) -> str | None:
    """Claim the key for `job_id`; None if it is ours now, else the job holding it."""
    ttl_ms = max(1, round(spec.ttl * 1000))
    holder = _CLAIM(
        get_redis(),
        [spec.key, JOB_PREFIX + job_id],
        [job_id, ttl_ms, replace or ""],
    )
    return None if holder is None else str(holder)


def claim_or_existing(spec: UniqueSpec, job_id: str) -> Job | None:
    """Claim the key for a new job, or return the queued or running job already holding it.

    A holder that already finished (its release was lost, or it was cancelled before a
    worker saw it) or whose row never appears (its submitter died before committing) is
    replaced, atomically, so two submitters never both take over.
    """
    replace: str | None = None
    waiting_for: str | None = None
    since = 0.0
    while True:
        holder = claim(spec, job_id, replace=replace)
        if holder is None:
            return None
        with session_scope() as session:
            job = session.get(Job, holder)
        if job is not None and job.state not in TERMINAL_STATES:
            return job
        if job is not None:
            replace = holder
            continue
        # No row yet: the holder's submitter is between its claim and its commit.
        if holder != waiting_for:
            waiting_for, since = holder, time.monotonic()
        if time.monotonic() - since > COMMIT_GRACE_SECONDS:
            log.warning("unique claim %s held by unrecorded job %s; replacing", spec.key, holder)
            replace = holder
            continue
        time.sleep(POLL_SECONDS)


def release_job(job_id: str) -> bool:
    """Drop the claim of a finished job, if it still holds one. Never raises."""
    try:
        return bool(_RELEASE(get_redis(), [JOB_PREFIX + job_id], [job_id]))
    except RedisError as exc:
        log.warning("releasing the unique claim of job %s failed (it expires): %s", job_id, exc)
        return False
