"""The API's shared pub/sub connection on a real Redis: fan-out, unsubscribing, and
surviving a killed connection."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis

from conveyor.api import event_hub
from conveyor.api.event_hub import EventHub

pytestmark = pytest.mark.integration


async def _next(queue: asyncio.Queue[str]) -> str:
    return await asyncio.wait_for(queue.get(), 5)


def _subscriptions(client: redis.Redis, name: str) -> list[int]:
    return [int(item["sub"]) for item in client.client_list() if item.get("name") == name]


async def _until(predicate: object, what: str) -> None:
    for _ in range(100):
        if callable(predicate) and predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_one_connection_fans_out_and_survives_being_killed(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(event_hub, "READ_SECONDS", 0.1)
    publisher = redis.Redis.from_url(redis_url, decode_responses=True)
    first, second = f"test:hub:{uuid.uuid4().hex}", f"test:hub:{uuid.uuid4().hex}"

    async def scenario() -> None:
        hub = EventHub(redis_url)
        name = hub.client_name
        try:
            async with (
                hub.follow(first) as a,
                hub.follow(first) as b,
                hub.follow(second) as c,
            ):
                # Subscribed when `follow` returns: nothing published after it is lost.
                publisher.publish(first, "one")
                publisher.publish(second, "two")
                assert [await _next(a), await _next(b), await _next(c)] == ["one", "one", "two"]
                assert _subscriptions(publisher, name) == [2]

                [hub_id] = [item["id"] for item in publisher.client_list() if item["name"] == name]
                publisher.client_kill_filter(_id=hub_id)  # only ours: others share this Redis
                killed = [item for item in publisher.client_list() if item.get("name") == name]
                assert killed == []
                # Reconnected with both channels subscribed again.
                await _until(lambda: _subscriptions(publisher, name) == [2], "a reconnect")
                publisher.publish(first, "three")
                assert [await _next(a), await _next(b)] == ["three", "three"]
            await _until(lambda: _subscriptions(publisher, name) == [0], "unsubscribing")
            async with hub.follow(first) as again:
                publisher.publish(first, "four")
                assert await _next(again) == "four"
        finally:
            await hub.close()
        await _until(lambda: _subscriptions(publisher, name) == [], "the connection to close")

    try:
        asyncio.run(scenario())
    finally:
        publisher.close()
