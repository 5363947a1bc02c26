"""kombu's Redis transport with one client per channel (core/kombu_redis.py), on real Redis."""

from __future__ import annotations

import pytest
from kombu import Connection, Exchange, Queue

from conveyor.core import kombu_redis
from conveyor.core.celery_app import create_celery_app
from conveyor.core.settings import Settings

pytestmark = pytest.mark.integration


def test_a_channel_keeps_one_client_and_messages_still_flow(system_redis_url: str) -> None:
    kombu_redis.install()
    queue = Queue("kept-client", Exchange("kept-client"), routing_key="kept-client")
    with Connection(system_redis_url) as connection:
        # Still a redis:// connection to anyone who asks (the worker banner, Flower).
        assert connection.as_uri().startswith("redis://")
        channel = connection.default_channel
        assert isinstance(channel, kombu_redis.Channel)
        client = channel._create_client()
        with connection.Producer(channel) as producer:
            for n in range(3):
                producer.publish(
                    {"n": n},
                    exchange=queue.exchange,
                    routing_key="kept-client",
                    declare=[queue],
                    serializer="json",
                )
        assert channel._create_client() is client
        received: list[int] = []
        with connection.Consumer(
            queue,
            accept=["json"],
            callbacks=[lambda body, message: (received.append(body["n"]), message.ack())],
        ):
            for _ in range(3):
                connection.drain_events(timeout=5)
        assert received == [0, 1, 2]
        assert channel.client.llen("kept-client") == 0
        # After a fork kombu replaces the pool: the kept client goes with the old one.
        channel._disconnect_pools()
        fresh = channel._create_client()
        assert fresh is not client
        assert fresh.connection_pool is channel.pool
        assert fresh.ping()


def test_conveyor_apps_publish_through_it(system_redis_url: str) -> None:
    app = create_celery_app(Settings(redis_url=system_redis_url, broker_url=system_redis_url))
    with app.connection_for_write() as connection:
        assert isinstance(connection.default_channel, kombu_redis.Channel)
        assert connection.as_uri().startswith("redis://")
