"""The integration stack with a sandbox gateway: its own process, the worker and API
restarted to point at it, and helpers the payments tests share."""

from __future__ import annotations

import json
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from conveyor.webhooks.signing import generate_secret
from tests.integration.conftest import Process, Stack, free_port, wait_for

SLOW_SECONDS = 3.0
# The worker's limits for these tests: a killed worker's charge comes back after 12 s.
PAYMENTS_ENV = {
    "CONVEYOR_PAYMENTS_GATEWAY_TIMEOUT_SECONDS": "1.5",
    "CONVEYOR_PAYMENTS_BACKOFF_MAX_SECONDS": "1",
    "CONVEYOR_TASK_SOFT_TIME_LIMIT": "8",
    "CONVEYOR_TASK_TIME_LIMIT": "10",
    "CONVEYOR_VISIBILITY_TIMEOUT": "12",
    # Webhook endpoints on loopback receive the payment events.
    "CONVEYOR_ALLOW_PRIVATE_NETWORKS": "true",
}


def _up(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def restart(stack: Stack) -> None:
    """The API and the worker again, with the stack's current environment."""
    stack.worker.stop()
    stack.api.stop()
    stack.api = Process("api", stack.api.argv, stack.env, stack.api.log_path)
    stack.api.start()
    wait_for(lambda: _up(f"{stack.api_url}/health/live"), 30, "the API to restart")
    stack.start_worker()


@dataclass
class Payments:
    stack: Stack
    sandbox_url: str
    owner: str = field(default_factory=lambda: f"payer-{uuid.uuid4().hex[:8]}")

    def client(self) -> httpx.Client:
        return self.stack.client(self.stack.key_for(self.owner))

    def pay(
        self, client: httpx.Client, card: str, amount: int = 1999, customer: str = "cus_1"
    ) -> dict[str, Any]:
        body = {"amount": amount, "currency": "USD", "customer_id": customer}
        response = client.post(
            "/api/v1/payments",
            json={**body, "payment_method": card},
            headers={"Idempotency-Key": str(uuid.uuid4())},
        )
        assert response.status_code == 202, response.text
        payment: dict[str, Any] = response.json()
        return payment

    def wait_payment(
        self, client: httpx.Client, payment_id: str, states: set[str], timeout: float = 60
    ) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            body: dict[str, Any] = client.get(f"/api/v1/payments/{payment_id}").json()
            return body if body.get("status") in states else None

        try:
            found: dict[str, Any] = wait_for(reached, timeout, f"payment {payment_id} in {states}")
        except AssertionError:
            print(self.stack.worker.log_tail())
            raise
        return found

    def stats(self, key: str | None = None) -> dict[str, Any]:
        params = {"key": key} if key else {}
        result: dict[str, Any] = httpx.get(f"{self.sandbox_url}/stats", params=params).json()
        return result

    def configure(self, **values: float | bool) -> None:
        httpx.put(f"{self.sandbox_url}/config", json=values).raise_for_status()


@pytest.fixture(scope="module", name="payments")
def payments_fixture(stack: Stack) -> Iterator[Payments]:
    port = free_port()
    secret = generate_secret()
    crash_dir = stack.tmp / "payment-crashes"
    crash_dir.mkdir(exist_ok=True)
    sandbox_env = {
        **stack.env,
        "CONVEYOR_SANDBOX_GATEWAY_PORT": str(port),
        "CONVEYOR_SANDBOX_SLOW_SECONDS": str(SLOW_SECONDS),
        "CONVEYOR_SANDBOX_WEBHOOK_URL": f"{stack.api_url}/api/v1/payments/gateway-events",
        "CONVEYOR_PAYMENTS_GATEWAY_WEBHOOK_SECRET": secret,
    }
    sandbox = Process(
        "sandbox",
        [sys.executable, "-m", "conveyor.workloads.payments.sandbox"],
        sandbox_env,
        stack.tmp / "sandbox.log",
    )
    sandbox.start()
    url = f"http://127.0.0.1:{port}"
    saved = dict(stack.env)
    try:
        wait_for(lambda: _up(f"{url}/health"), 30, "the sandbox gateway to start")
        stack.env.update(
            {
                **PAYMENTS_ENV,
                "CONVEYOR_PAYMENTS_GATEWAY_URL": url,
                "CONVEYOR_PAYMENTS_GATEWAY_WEBHOOK_SECRET": secret,
                "PAYMENTS_TEST_CRASH_DIR": str(crash_dir),
                # Log lines of a worker killed with SIGKILL are not lost in a buffer.
                "PYTHONUNBUFFERED": "1",
            }
        )
        restart(stack)
        yield Payments(stack, url)
    finally:
        sandbox.stop()
        stack.env.clear()
        stack.env.update(saved)
        restart(stack)


class EventReceiver:
    """Collects webhook deliveries (JSON bodies) on loopback."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                receiver.events.append(
                    {"webhook_id": self.headers.get("webhook-id"), **json.loads(body)}
                )
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
