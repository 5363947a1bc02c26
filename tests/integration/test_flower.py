"""`conveyor flower` as a user runs it: a subprocess on real Redis, stopped with SIGTERM."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import redis

from tests.integration.conftest import free_port, wait_for

pytestmark = pytest.mark.integration

AUTH = ("conveyor", "flower-test-secret")


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _control_methods(pubsub: redis.client.PubSub, seconds: float) -> set[str]:
    """Names of the remote-control commands broadcast to workers within `seconds`."""
    seen: set[str] = set()
    deadline = time.monotonic() + seconds
    while "enable_events" not in seen and time.monotonic() < deadline:
        message = pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
        if message is None:
            continue
        envelope = json.loads(message["data"])
        body = json.loads(base64.b64decode(envelope["body"]))
        seen.add(str(body.get("method")))
    return seen


def test_flower_serves_and_enables_events(redis_url: str, tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONVEYOR_", "FLOWER_"))}
    env.update(
        {
            "CONVEYOR_REDIS_URL": redis_url,
            "CONVEYOR_DATABASE_URL": f"sqlite:///{tmp_path / 'c.db'}",
            # `conveyor flower` turns events on whatever Flower's own settings say.
            "FLOWER_ENABLE_EVENTS": "false",
        }
    )
    control = redis.Redis.from_url(redis_url)
    pubsub = control.pubsub()  # type: ignore[no-untyped-call]
    pubsub.psubscribe("*celery.pidbox")  # the fanout that carries broadcasts to workers
    log_path = tmp_path / "flower.log"
    base = f"http://127.0.0.1:{port}"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-c", "from conveyor.cli import main; main()", "flower",
             "--port", str(port), "--basic-auth", ":".join(AUTH)],
            cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:

            def up() -> bool:
                assert process.poll() is None, log_path.read_text(errors="replace")
                return _answers(f"{base}/healthcheck")

            wait_for(up, 30, "Flower's /healthcheck", interval=0.2)
            assert httpx.get(f"{base}/api/workers", timeout=5).status_code == 401
            response = httpx.get(f"{base}/api/workers", auth=AUTH, timeout=10)
            assert response.status_code == 200, response.text
            assert response.headers["content-type"].startswith("application/json")
            assert isinstance(response.json(), dict)
            # Flower asks workers to send task events every 5 s.
            assert "enable_events" in _control_methods(pubsub, 15)
        finally:
            pubsub.close()
            control.close()
            process.send_signal(signal.SIGTERM)
            try:
                code = process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
                raise
    output = log_path.read_text(errors="replace")
    assert code == 0, output[-3000:]
    assert "Traceback" not in output
    assert not _answers(f"{base}/healthcheck")
