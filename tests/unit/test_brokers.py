"""Redis and RabbitMQ as brokers, and Sentinel URLs for the Redis parts: the configuration
each gets. Delivery itself is tested against the real servers (tests/integration)."""

from __future__ import annotations

from typing import Any

import pytest

from conveyor.core import brokers
from conveyor.core.celery_app import celery_config
from conveyor.core.redis_client import sentinel_nodes
from conveyor.core.settings import Settings, SettingsError, _read
from conveyor.core.task import SLEEP_IN_PLACE, SLEEP_IN_PLACE_AMQP

REDIS = "redis://127.0.0.1:6379/0"
AMQP = "amqp://guest:guest@rabbit:5672/prod"


def config(**values: Any) -> dict[str, Any]:
    return celery_config(Settings(_env_file=None, **{"redis_url": REDIS, **values}))  # type: ignore[call-arg]


def test_on_rabbitmq_queues_are_quorum_queues_on_a_topic_exchange() -> None:
    declared = config(broker_url=AMQP)["task_queues"]
    assert {queue.name for queue in declared} >= {"default", "email", "images"}
    for queue in declared:
        assert queue.queue_arguments == {"x-queue-type": "quorum"}
        assert queue.exchange.name == brokers.AMQP_EXCHANGE
        assert queue.exchange.type == "topic"  # delays cannot reach a direct exchange
        assert queue.routing_key == queue.name
        assert queue.durable


def test_on_rabbitmq_publishes_are_confirmed_and_redis_options_left_out() -> None:
    options = config(broker_url=AMQP)["broker_transport_options"]
    assert options == {"confirm_publish": True}


def test_on_redis_queues_and_options_are_kombus_redis_ones() -> None:
    built = config()
    for queue in built["task_queues"]:
        assert not queue.queue_arguments
        assert queue.exchange.type == "direct"
    options = built["broker_transport_options"]
    assert options["visibility_timeout"] == Settings(redis_url=REDIS).visibility_timeout
    assert "confirm_publish" not in options
    assert "master_name" not in options


def test_sentinel_urls_carry_the_master_name_to_kombu_and_celery() -> None:
    sentinel = "sentinel://10.0.0.1:26379;sentinel://10.0.0.2:26379/2"
    built = config(redis_url=sentinel, redis_sentinel_master="primary")
    assert built["broker_url"] == sentinel
    assert built["broker_transport_options"]["master_name"] == "primary"
    assert built["result_backend_transport_options"] == {"master_name": "primary"}


def test_sentinel_url_parts() -> None:
    nodes, db, password = sentinel_nodes("sentinel://:s3cret@h1:26379;sentinel://h2/4")
    assert nodes == [("h1", 26379), ("h2", 26379)]
    assert (db, password) == (4, "s3cret")


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        (
            {"CONVEYOR_REDIS_URL": "sentinel://h1:26379/0"},
            "a sentinel:// URL needs CONVEYOR_REDIS_SENTINEL_MASTER",
        ),
        (
            {"CONVEYOR_REDIS_URL": "amqp://guest@rabbit//"},
            "CONVEYOR_REDIS_URL: must be a redis://, rediss:// or sentinel:// URL",
        ),
        (
            {"CONVEYOR_REDIS_URL": REDIS, "CONVEYOR_BROKER_URL": "kafka://k:9092"},
            "CONVEYOR_BROKER_URL: must be a redis://, rediss://, sentinel:// or amqp:// URL",
        ),
    ],
)
def test_a_wrong_url_is_one_line_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch, variables: dict[str, str], message: str
) -> None:
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as caught:
        _read(Settings)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_short_waits_are_slept_in_place_on_rabbitmq_which_delays_in_whole_seconds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from conveyor.core import task
    from conveyor.core.settings import use_settings

    try:
        use_settings(Settings(redis_url=REDIS, broker_url=AMQP))
        assert task.sleep_in_place_limit() == SLEEP_IN_PLACE_AMQP == 1.0
        use_settings(Settings(redis_url=REDIS))
        assert task.sleep_in_place_limit() == SLEEP_IN_PLACE < 1
    finally:
        use_settings(None)
