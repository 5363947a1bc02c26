"""What differs between the two brokers Conveyor runs on: Redis and RabbitMQ (AMQP).

Redis keeps each queue as lists that can be counted and searched; RabbitMQ keeps quorum
queues (replicated, and required for Celery's delays held by the broker) and confirms every
publish. Everything else — acks late, redelivery of a dead worker's jobs, the ledger — is
the same on both.
"""

from __future__ import annotations

from typing import Any

from kombu import Exchange, Queue
from kombu.transport.native_delayed_delivery import (
    bind_queue_to_native_delayed_delivery_exchange,
    declare_native_delayed_delivery_exchanges_and_queues,
)
from kombu.transport.redis import PRIORITY_STEPS, Channel

from conveyor.core.settings import AMQP_SCHEMES, REDIS_SCHEMES, Settings

# One topic exchange for every queue: RabbitMQ's delayed delivery (countdowns, retries with
# backoff) routes through topic bindings and cannot reach a queue bound to a direct exchange.
AMQP_EXCHANGE = "conveyor"


def is_redis(url: str) -> bool:
    return url.startswith(REDIS_SCHEMES)


def is_amqp(url: str) -> bool:
    return url.startswith(AMQP_SCHEMES)


def declared_queues(names: list[str], settings: Settings) -> list[Queue]:
    if not is_amqp(settings.broker):
        return [Queue(name, routing_key=name) for name in names]
    exchange = Exchange(AMQP_EXCHANGE, type="topic", durable=True)
    # Quorum queues are replicated and survive a broker node's loss; Celery then also holds
    # countdowns in the broker instead of in a worker's memory.
    arguments = {"x-queue-type": "quorum"}
    return [
        Queue(name, exchange, routing_key=name, durable=True, queue_arguments=arguments)
        for name in names
    ]


def transport_options(settings: Settings) -> dict[str, Any]:
    if is_amqp(settings.broker):
        # A publish returns once RabbitMQ has the message: a submit never reports a job it lost.
        return {"confirm_publish": True}
    return {
        # Redis redelivers an unacknowledged message after this; above any task's limit.
        "visibility_timeout": settings.visibility_timeout,
        # How often workers sweep for messages a dead worker held.
        "unacked_restore_interval": settings.unacked_restore_interval,
        "unacked_restore_throttle": 1,
        # A worker killed during a sweep leaves its sweep lock behind; kombu's 5 minutes
        # would hold back every redelivery that long. A sweep takes milliseconds.
        "unacked_mutex_expire": 30,
        # Above the 1 s queue poll (BRPOP), far below "hung": a frozen Redis is noticed.
        "socket_timeout": max(5.0, settings.redis_timeout_seconds),
        "socket_connect_timeout": settings.redis_timeout_seconds,
    }


def redis_list_keys(queue: str) -> list[str]:
    """The Redis lists kombu keeps a queue in: the queue itself (priority 0), then one per
    priority step (Conveyor sets no priority_steps, so kombu's defaults apply)."""
    return [queue if step == 0 else f"{queue}{Channel.sep}{step}" for step in PRIORITY_STEPS]


def queue_depths(
    names: list[str], settings: Settings, *, redis_client: Any = None, app: Any = None
) -> dict[str, int]:
    """Messages waiting in each queue (not those a worker holds), read from the broker.
    `redis_client`: the process's client of the Redis URL, used when that is the broker."""
    if is_amqp(settings.broker):
        return _amqp_depths(names, app)
    from conveyor.core.redis_client import connect, get_redis

    own = settings.broker != settings.redis
    if own:
        timeout = settings.redis_timeout_seconds
        client = connect(settings.broker, settings, socket_timeout=timeout)
    else:
        client = redis_client or get_redis(settings)
    try:
        with client.pipeline(transaction=False) as pipe:
            for name in names:
                for key in redis_list_keys(name):
                    pipe.llen(key)
            sizes = iter(pipe.execute())
        return {name: sum(int(next(sizes)) for _ in PRIORITY_STEPS) for name in names}
    finally:
        if own:
            client.close()


def _amqp_depths(names: list[str], app: Any) -> dict[str, int]:
    if app is None:
        from conveyor.core.celery_app import get_celery

        app = get_celery()
    depths = {}
    with app.connection_for_write() as connection:
        channel = connection.default_channel
        for name in names:
            try:
                # A passive declare counts without creating: a queue no worker declared yet
                # holds nothing.
                depths[name] = int(channel.queue_declare(name, passive=True).message_count)
            except Exception as exc:
                if getattr(exc, "code", None) != 404:
                    raise
                depths[name] = 0
                channel = connection.channel()  # a 404 closes the channel
    return depths


def declare_every_queue(sender: Any = None, **_: Any) -> None:
    """At a worker's start, on RabbitMQ: every Conveyor queue, also those this worker does
    not consume, declared and bound to the delayed-delivery exchanges. A queue missing then
    would never receive its delayed jobs (retries, waits)."""
    app = getattr(sender, "app", None)
    if app is not None and is_amqp(str(app.conf.broker_url)):
        prepare_delays(app)


# Broker URLs this process has prepared delays on.
_delays_prepared: set[str] = set()


def prepare_delays(app: Any) -> None:
    """On RabbitMQ, once per process: Celery's delayed-delivery exchanges and queues exist,
    and every Conveyor queue is declared and bound to them. Workers prepare them at start; a
    process that publishes a delayed job first (an API before any worker ever ran) would
    otherwise publish to an exchange that does not exist yet."""
    url = str(app.conf.broker_url)
    if url in _delays_prepared:
        return
    with app.connection_for_write() as connection:
        declare_native_delayed_delivery_exchanges_and_queues(
            connection, app.conf.broker_native_delayed_delivery_queue_type
        )
        channel = connection.default_channel
        for queue in app.amqp.queues.values():
            queue(channel).declare()
            bind_queue_to_native_delayed_delivery_exchange(connection, queue)
    _delays_prepared.add(url)
