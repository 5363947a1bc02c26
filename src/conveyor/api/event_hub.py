"""One Redis pub/sub connection per API process, shared by every open event stream.

A reader task takes each message off the connection and puts it in the queue of every
stream following that channel. A channel is subscribed while at least one stream follows
it. Before this, every stream held a Redis connection of its own, and a few hundred open
streams were a few hundred Redis clients.

    async with hub.follow(job_channel(job_id)) as messages:   # subscribed once entered
        data = await messages.get()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.exceptions import RedisError

from conveyor.core.events import WATCHING_KEY, WATCHING_TTL_SECONDS
from conveyor.core.redis_client import sentinel_nodes
from conveyor.core.settings import get_settings

log = logging.getLogger(__name__)

# The connection's name in CLIENT LIST, followed by the process id.
CLIENT_NAME = "conveyor-api-events"
# Messages kept for a stream that reads slowly; the oldest go first (each event is the
# whole job, so the newest is what matters).
QUEUE_SIZE = 64
# How long `follow` waits for Redis to confirm a subscription before going on without it
# (the stream still re-reads the ledger every few seconds).
CONFIRM_SECONDS = 5.0
# With nothing received for this long, ping; with no answer for three times as long,
# reconnect (a connection that died silently, without a reset, would wait forever).
IDLE_PING_SECONDS = 15.0
READ_SECONDS = 1.0
# While any channel is followed, the key that tells workers to publish is renewed this often.
MARK_EVERY_SECONDS = 1.0


@dataclass
class _Channel:
    queues: set[asyncio.Queue[str]] = field(default_factory=set)
    subscribed: asyncio.Event = field(default_factory=asyncio.Event)


class EventHub:
    def __init__(self, redis_url: str | None = None) -> None:
        self._url = redis_url
        self.client_name = f"{CLIENT_NAME}-{os.getpid()}"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reset()

    def _reset(self) -> None:
        self._client: aioredis.Redis | None = None
        # Its own connection: the pub/sub one cannot send commands.
        self._marks: aioredis.Redis | None = None
        self._pubsub: PubSub | None = None
        self._reader: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._channels: dict[str, _Channel] = {}
        # One waiter per SUBSCRIBE sent, per channel, in order: Redis confirms each once.
        self._unconfirmed: dict[str, deque[asyncio.Event]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._marked_at = float("-inf")

    @contextlib.asynccontextmanager
    async def follow(self, channel: str) -> AsyncIterator[asyncio.Queue[str]]:
        """The messages of `channel` while the block runs; subscribed before it starts."""
        queue: asyncio.Queue[str] = asyncio.Queue(QUEUE_SIZE)
        state = await self._add(channel, queue)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(state.subscribed.wait(), CONFIRM_SECONDS)
            yield queue
        finally:
            # Synchronous, so it also runs in a stream being cancelled by a disconnect.
            self._remove(channel, queue)

    async def _add(self, channel: str, queue: asyncio.Queue[str]) -> _Channel:
        if self._loop is not asyncio.get_running_loop():
            # A new event loop (tests): nothing of the old one can be used in it.
            self._loop = asyncio.get_running_loop()
            self._reset()
        async with self._lock:
            state = self._channels.get(channel)
            if state is None:
                pubsub = await self._connected()
                state = self._channels[channel] = _Channel()
                self._unconfirmed.setdefault(channel, deque()).append(state.subscribed)
                try:
                    await pubsub.subscribe(channel)
                except BaseException:
                    del self._channels[channel]
                    self._unconfirmed[channel].pop()
                    raise
                self._marked_at = float("-inf")
                await self._mark_watching()
            state.queues.add(queue)
            return state

    def _remove(self, channel: str, queue: asyncio.Queue[str]) -> None:
        state = self._channels.get(channel)
        if state is None:
            return
        state.queues.discard(queue)
        if not state.queues:
            del self._channels[channel]
            task = asyncio.get_running_loop().create_task(self._unsubscribe(channel))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _unsubscribe(self, channel: str) -> None:
        async with self._lock:
            # A stream may have followed the channel again meanwhile: then it stays.
            if channel in self._channels or self._pubsub is None:
                return
            try:
                await self._pubsub.unsubscribe(channel)
            except RedisError as exc:
                log.warning("could not unsubscribe from %s: %s", channel, exc)

    async def _connected(self) -> PubSub:
        if self._pubsub is None:
            url = self._url or get_settings().redis
            options: dict[str, Any] = {
                "decode_responses": True,
                "client_name": self.client_name,
                "socket_connect_timeout": 5,
                "socket_keepalive": True,
            }
            self._client = _async_client(url, options)
            self._marks = _async_client(
                url, {**options, "client_name": f"{self.client_name}-marks"}
            )
            self._pubsub = self._client.pubsub()
            await self._pubsub.connect()  # type: ignore[no-untyped-call]
            self._reader = asyncio.get_running_loop().create_task(self._read(self._pubsub))
        return self._pubsub

    async def _read(self, pubsub: PubSub) -> None:
        loop = asyncio.get_running_loop()
        heard = pinged = loop.time()
        while True:
            try:
                message = await pubsub.get_message(timeout=READ_SECONDS)
                await self._mark_watching()
                now = loop.time()
                if message is not None:
                    heard = now
                    self._dispatch(message)
                elif now - heard > 3 * IDLE_PING_SECONDS and pubsub.connection is not None:
                    log.warning("no answer from Redis on the event connection; reconnecting")
                    await pubsub.connection.disconnect()
                    heard = now
                elif now - max(heard, pinged) > IDLE_PING_SECONDS:
                    await pubsub.ping()
                    pinged = now
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                # Reading again reconnects, and redis-py subscribes the channels again.
                log.warning("event connection to Redis failed: %s; retrying", exc)
                await asyncio.sleep(1.0)

    async def _mark_watching(self) -> None:
        """Keep workers publishing job events while a channel is followed (core/events.py)."""
        now = asyncio.get_running_loop().time()
        if not self._channels or self._marks is None or now - self._marked_at < MARK_EVERY_SECONDS:
            return
        self._marked_at = now
        try:
            ttl = int(WATCHING_TTL_SECONDS * 1000)
            await self._marks.set(WATCHING_KEY, self.client_name, px=ttl)
        except RedisError as exc:
            log.warning("could not tell workers that job events are followed: %s", exc)

    def _dispatch(self, message: dict[str, Any]) -> None:
        kind, channel = message.get("type"), message.get("channel")
        if kind == "subscribe" and isinstance(channel, str):
            waiting = self._unconfirmed.get(channel)
            if waiting:
                waiting.popleft().set()
                if not waiting:
                    del self._unconfirmed[channel]
            return
        if kind != "message" or not isinstance(channel, str):
            return
        state = self._channels.get(channel)
        if state is None:
            return
        for queue in state.queues:
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(str(message["data"]))

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._pubsub is not None:
            await self._pubsub.aclose()  # type: ignore[no-untyped-call]
        if self._client is not None:
            await self._client.aclose()
        if self._marks is not None:
            await self._marks.aclose()
        self._reset()


def _async_client(url: str, options: dict[str, Any]) -> aioredis.Redis:
    if not url.startswith("sentinel://"):
        return aioredis.Redis.from_url(url, **options)
    # The master the Sentinels name, as for every other Redis client (redis_client.connect).
    nodes, db, password = sentinel_nodes(url)
    sentinel = AsyncSentinel(nodes, socket_connect_timeout=5, password=password)  # type: ignore[no-untyped-call]
    master: aioredis.Redis = sentinel.master_for(
        str(get_settings().redis_sentinel_master), db=db, password=password, **options
    )
    return master
