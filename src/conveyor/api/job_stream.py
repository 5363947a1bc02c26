"""A job's progress as server-sent events, at most N open streams per API key.

Each stream follows the job's channel on the process's shared pub/sub connection
(api/event_hub.py) and holds one place of its key's semaphore (core/semaphore.py), shared
by every API process; the place is given back however the stream ends, and a lease frees
the places of an API process that died.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
from fastapi import HTTPException, Request, status
from fastapi.responses import StreamingResponse
from redis.exceptions import RedisError
from starlette.concurrency import run_in_threadpool
from starlette.types import Receive, Scope, Send

from conveyor.api import shutdown
from conveyor.api.event_hub import EventHub
from conveyor.core import events, ledger
from conveyor.core.db import session_scope
from conveyor.core.events import event_payload
from conveyor.core.models import TERMINAL_STATES, JobState
from conveyor.core.redis_client import job_channel
from conveyor.core.semaphore import Semaphore
from conveyor.core.settings import get_settings

log = logging.getLogger(__name__)

# Re-read the ledger this often while streaming, in case a pub/sub message was missed.
SSE_RECHECK_SECONDS = 5.0
# The first re-read, once every worker knows the stream follows (core/events.py): what
# changed before they did was not published.
SSE_FIRST_RECHECK_SECONDS = 3 * events.CHECK_SECONDS
# A stream renews its place every third of this; an API process that died frees its
# places this long after its last renewal.
PLACE_LEASE_SECONDS = 30.0
# When a full key may try again: streams end whenever their jobs do, so a guess.
RETRY_AFTER_SECONDS = 5


def _load_snapshot(job_id: str, owner: str | None) -> dict[str, Any] | None:
    """The job as an event carries it, like the ones published: equal when nothing changed."""
    with session_scope() as session:
        job = ledger.get_job(session, job_id, owner)
        return event_payload(ledger.job_to_dict(job)) if job else None


async def snapshot(job_id: str, owner: str | None) -> dict[str, Any] | None:
    result: dict[str, Any] | None = await run_in_threadpool(_load_snapshot, job_id, owner)
    return result


def _sse(snapshot: dict[str, Any], sequence: int) -> str:
    event = "progress" if snapshot["state"] == JobState.STARTED else snapshot["state"]
    return f"id: {sequence}\nevent: {event}\ndata: {json.dumps(snapshot, default=str)}\n\n"


class _Place:
    """One stream's place in its key's semaphore."""

    def __init__(self, semaphore: Semaphore) -> None:
        self.semaphore = semaphore
        self.holder = uuid.uuid4().hex
        self.renewed = time.monotonic()

    async def keep(self) -> None:
        if time.monotonic() - self.renewed < PLACE_LEASE_SECONDS / 3:
            return
        self.renewed = time.monotonic()
        try:
            await run_in_threadpool(self.semaphore.renew, self.holder)
        except RedisError as exc:
            log.warning("could not renew an event stream's place: %s", exc)

    async def release(self) -> None:
        try:
            await run_in_threadpool(self.semaphore.release, self.holder)
        except RedisError as exc:  # the lease frees it
            log.warning("could not release an event stream's place: %s", exc)


async def _take_place(key_id: str) -> _Place | None:
    limit = get_settings().sse_max_streams_per_key
    if limit <= 0:
        return None
    place = _Place(Semaphore("sse:" + key_id, limit=limit, lease=PLACE_LEASE_SECONDS))
    if not await run_in_threadpool(place.semaphore.acquire, place.holder):
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            f"this API key already has {limit} open event streams, the most it may have "
            "(CONVEYOR_SSE_MAX_STREAMS_PER_KEY); close one, or retry when one has ended",
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )
    return place


class EventStream(StreamingResponse):
    """Runs `on_close` however the response ends: the job done, the client gone, an error."""

    def __init__(
        self, content: AsyncIterator[str], on_close: Callable[[], Awaitable[None]]
    ) -> None:
        super().__init__(
            content,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            # A disconnect cancels the response; the clean-up must still run to the end.
            with anyio.CancelScope(shield=True):
                await self._on_close()


async def open_stream(
    request: Request,
    hub: EventHub,
    job_id: str,
    owner: str | None,
    key_id: str,
    first: dict[str, Any],
) -> EventStream:
    """A place for the stream (429 if its key has none left), then the subscription:
    both before the first byte, so a full key or a Redis outage is a plain error answer."""
    resources = contextlib.AsyncExitStack()
    try:
        place = await _take_place(key_id)
        if place is not None:
            resources.push_async_callback(place.release)
        messages = await resources.enter_async_context(hub.follow(job_channel(job_id)))
    except BaseException:
        with anyio.CancelScope(shield=True):
            await resources.aclose()
        raise
    events = _events(request, job_id, owner, first, messages, place)
    return EventStream(events, resources.aclose)


async def _events(
    request: Request,
    job_id: str,
    owner: str | None,
    first: dict[str, Any],
    messages: asyncio.Queue[str],
    place: _Place | None,
) -> AsyncIterator[str]:
    # Read after subscribing, so a change between the two arrives as a message.
    current = await snapshot(job_id, owner) or first
    last_sent = current
    sequence = 1
    yield _sse(current, sequence)
    recheck = SSE_FIRST_RECHECK_SECONDS
    while current["state"] not in TERMINAL_STATES:
        if await request.is_disconnected() or shutdown.stopping():
            return
        if place is not None:
            await place.keep()
        try:
            data: str | None = await asyncio.wait_for(messages.get(), recheck)
        except TimeoutError:
            data, recheck = None, SSE_RECHECK_SECONDS
        if data is not None:
            current = json.loads(data)
        else:
            current = await snapshot(job_id, owner) or current
            if current == last_sent:
                yield ": keep-alive\n\n"
                continue
        last_sent = current
        sequence += 1
        yield _sse(current, sequence)
