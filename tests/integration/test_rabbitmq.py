"""RabbitMQ as the broker: what differs from Redis. The delivery tests shared with Redis
(killed worker, retries, dead letters, unique jobs, rate limits, pausing) carry
`@pytest.mark.both_brokers` in their own files."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from conveyor.core.brokers import AMQP_EXCHANGE
from conveyor.core.celery_app import get_celery
from conveyor.core.jobs import Submission, submit
from conveyor.core.settings import get_settings
from conveyor.core.workloads import queues
from tests.integration.conftest import (
    RABBITMQ_URL,
    REDIS_HOST,
    REDIS_PORT,
    SYSTEM_REDIS_DB,
    Stack,
    rabbitmqctl,
    wait_for,
)

pytestmark = pytest.mark.rabbitmq


def _vhost(stack: Stack) -> str:
    return stack.env["CONVEYOR_BROKER_URL"].rsplit("/", 1)[1]


def _listing(stack: Stack, what: str, *columns: str) -> list[dict[str, str]]:
    result = subprocess.run(
        ["rabbitmqctl", "-q", "--no-table-headers", f"list_{what}", "-p", _vhost(stack), *columns],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    rows = [line.split("\t") for line in result.stdout.splitlines() if line.strip()]
    return [dict(zip(columns, row, strict=True)) for row in rows]


def test_every_queue_is_a_quorum_queue_on_one_topic_exchange(stack: Stack) -> None:
    declared = {row["name"]: row["type"] for row in _listing(stack, "queues", "name", "type")}
    for name in queues(get_settings()):
        # Also the queues this stack's worker does not consume: declared at its start.
        assert declared.get(name) == "quorum", (name, declared.get(name))
    exchanges = {row["name"]: row["type"] for row in _listing(stack, "exchanges", "name", "type")}
    assert exchanges[AMQP_EXCHANGE] == "topic"
    bindings = _listing(stack, "bindings", "source_name", "destination_name", "routing_key")
    assert {
        "source_name": AMQP_EXCHANGE,
        "destination_name": "default",
        "routing_key": "default",
    } in bindings


def _delayed_messages(stack: Stack) -> int:
    rows = _listing(stack, "queues", "name", "messages")
    return sum(int(row["messages"]) for row in rows if row["name"].startswith("celery_delayed_"))


def test_a_countdown_waits_in_the_broker_not_in_a_worker(stack: Stack, admin: httpx.Client) -> None:
    before = _delayed_messages(stack)
    submitted = time.monotonic()
    job = submit(
        Submission(
            task_name="conveyor.diagnostics.run",
            kwargs={"steps": 1, "step_seconds": 0},
            countdown=6,
        )
    )
    wait_for(lambda: _delayed_messages(stack) > before, 5, "the job in a delay queue")
    # No worker holds it meanwhile: on Redis the worker would keep it, unacknowledged.
    scheduled: dict[str, list[Any]] = get_celery().control.inspect(timeout=1).scheduled() or {}
    assert all(job.id not in str(entries) for entries in scheduled.values()), scheduled
    assert admin.get(f"/api/v1/jobs/{job.id}").json()["state"] == "queued"

    done = stack.wait_job(job.id, {"succeeded", "dead"}, timeout=40)
    assert done["state"] == "succeeded"
    assert time.monotonic() - submitted >= 5  # RabbitMQ delays in whole seconds


def test_a_sub_second_retry_delay_is_published(stack: Stack, admin: httpx.Client) -> None:
    """RabbitMQ refuses a delay that rounds to 0 s; Conveyor sends such delays as 1 s."""
    job = submit(
        Submission(
            task_name="conveyor.diagnostics.run",
            kwargs={"steps": 1, "step_seconds": 0},
            countdown=0.3,
        )
    )
    assert stack.wait_job(job.id, {"succeeded", "dead"})["state"] == "succeeded"


def test_a_delayed_job_submitted_before_any_worker_ran_arrives(tmp_path: Path) -> None:
    """The delay exchanges are made by whoever publishes first, not only by workers."""
    vhost = f"conveyor-fresh-{uuid.uuid4().hex[:8]}"
    if rabbitmqctl("add_vhost", vhost).returncode != 0:
        pytest.skip("cannot create a RabbitMQ virtual host (rabbitmqctl)")
    try:
        user = RABBITMQ_URL.split("://", 1)[1].split(":", 1)[0]
        rabbitmqctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")},
            "CONVEYOR_REDIS_URL": f"redis://{REDIS_HOST}:{REDIS_PORT}/{SYSTEM_REDIS_DB}",
            "CONVEYOR_BROKER_URL": f"{RABBITMQ_URL.rstrip('/')}/{vhost}",
            "CONVEYOR_DATABASE_URL": f"sqlite:///{tmp_path / 'ledger.db'}",
            "CONVEYOR_DATA_DIR": str(tmp_path),
        }
        conveyor = str(Path(sys.executable).parent / "conveyor")
        subprocess.run([conveyor, "db", "upgrade"], env=env, check=True, capture_output=True)
        script = (
            "from conveyor.core.jobs import Submission, submit\n"
            "submit(Submission(task_name='conveyor.diagnostics.run', countdown=2))\n"
        )
        submitted = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
        )
        assert submitted.returncode == 0, submitted.stderr[-2000:]

        def waiting_in_default() -> bool:
            rows = subprocess.run(
                ["rabbitmqctl", "-q", "--no-table-headers", "list_queues", "-p", vhost],
                capture_output=True,
                text=True,
                timeout=60,
            ).stdout.splitlines()
            return "default\t1" in rows

        wait_for(waiting_in_default, 20, "the delayed job to reach `default`", interval=0.5)
    finally:
        rabbitmqctl("delete_vhost", vhost)
