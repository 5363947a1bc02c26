"""The Redis semaphore that caps open event streams: places, release, and leases."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
import redis

from conveyor.core.semaphore import Semaphore

pytestmark = pytest.mark.integration


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(redis_url, decode_responses=True)
    yield connection
    connection.close()


def test_at_most_limit_holders_and_a_release_frees_a_place(client: redis.Redis) -> None:
    places = Semaphore(f"t-{uuid.uuid4().hex}", limit=2, lease=30, client=client)
    assert places.acquire("a")
    assert places.acquire("b")
    assert not places.acquire("c")
    assert places.acquire("a"), "a holder asking again keeps its place"
    assert places.holders() == 2
    places.release("a")
    assert places.acquire("c")
    assert not places.acquire("a")


def test_a_holder_that_stops_renewing_loses_its_place(client: redis.Redis) -> None:
    places = Semaphore(f"t-{uuid.uuid4().hex}", limit=1, lease=0.3, client=client)
    assert places.acquire("crashed")
    assert not places.acquire("next")
    time.sleep(0.4)
    assert places.acquire("next")
    places.renew("crashed")  # a stalled holder renewing late takes its place back anyway
    assert places.holders() == 2
    assert 0 < client.pttl(places.key) <= 300
