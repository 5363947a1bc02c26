"""The sandbox gateway over HTTP (in process) and the Stripe adapter's requests, the latter
against a loopback server that records what the official client sends."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from fastapi.testclient import TestClient

from conveyor.webhooks.signing import generate_secret, verify
from conveyor.workloads.payments.gateway import (
    ChargeRequest,
    GatewayRejected,
    GatewayTimeout,
    GatewayUnavailable,
    RefundRequest,
)
from conveyor.workloads.payments.sandbox import core as cards
from conveyor.workloads.payments.sandbox.app import create_app
from conveyor.workloads.payments.sandbox.client import SandboxGateway
from conveyor.workloads.payments.settings import PaymentsSettings
from conveyor.workloads.payments.stripe_gateway import StripeGateway

# --- a loopback server that records requests and answers from a plan ---------------------


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, list[str]]
    form: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes


@dataclass
class Recorder:
    replies: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    recorder = Recorder()

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            parts = urlsplit(self.path)
            recorder.seen.append(
                Seen(
                    self.command,
                    parts.path,
                    parse_qs(parts.query),
                    parse_qs(body.decode()) if b"=" in body else {},
                    {name.lower(): value for name, value in self.headers.items()},
                    body,
                )
            )
            status, reply = recorder.replies.pop(0) if recorder.replies else (200, {})
            data = json.dumps(reply).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = _answer

        def log_message(self, *args: Any) -> None:
            pass

    recorder.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=recorder.server.serve_forever, daemon=True).start()
    yield recorder
    recorder.server.shutdown()
    recorder.server.server_close()


# --- the sandbox over HTTP -----------------------------------------------------------------


def sandbox(**settings: Any) -> tuple[TestClient, SandboxGateway]:
    app = create_app(PaymentsSettings(**settings))
    client = TestClient(app)
    return client, SandboxGateway("http://sandbox", timeout=5, client=client)


def charge(key: str, method: str = cards.PM_SUCCEEDS, amount: int = 500) -> ChargeRequest:
    return ChargeRequest(key, amount, "EUR", method, "cus_1")


def test_sandbox_charges_once_per_key_and_refuses_other_params() -> None:
    client, gateway = sandbox()
    first = gateway.charge(charge("pay_1"))
    again = gateway.charge(charge("pay_1"))
    assert first.status == "succeeded"
    assert again == first
    with pytest.raises(GatewayRejected, match="idempotency_error"):
        gateway.charge(charge("pay_1", amount=501))
    assert gateway.find_charge("pay_1") == first
    assert gateway.find_charge("pay_2") is None
    stats = client.get("/stats", params={"key": "pay_1"}).json()
    assert stats["charges"] == 1
    assert stats["key"] == {"charges": 1, "charge_requests": 3, "status_checks": 1, "refunds": 0}
    missing = client.post("/v1/charges", json={"amount": 1})
    assert missing.status_code == 400


def test_sandbox_test_cards() -> None:
    client, gateway = sandbox()
    declined = gateway.charge(charge("pay_d", cards.PM_DECLINED))
    assert (declined.status, declined.failure_code) == ("failed", "card_declined")
    with pytest.raises(GatewayUnavailable, match="500"):
        gateway.charge(charge("pay_f", cards.PM_FAILS_ONCE))
    assert gateway.find_charge("pay_f") is None  # nothing was charged
    assert gateway.charge(charge("pay_f", cards.PM_FAILS_ONCE)).status == "succeeded"
    assert client.get("/stats").json()["succeeded"] == 1


@pytest.fixture
def live_sandbox() -> Iterator[str]:
    """The sandbox app served by uvicorn on loopback, in a thread: real client timeouts."""
    import socket

    import uvicorn

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    app = create_app(PaymentsSettings(sandbox_slow_seconds=2.0))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def test_sandbox_slow_card_charges_then_answers_after_the_client_gave_up(live_sandbox: str) -> None:
    gateway = SandboxGateway(live_sandbox, timeout=0.3)
    with pytest.raises(GatewayTimeout):
        gateway.charge(charge("pay_slow", cards.PM_TIMES_OUT))
    found = gateway.find_charge("pay_slow")
    assert found is not None
    assert found.status == "succeeded"
    # Asking again under the same key replays the answer at once, without a second charge.
    assert SandboxGateway(live_sandbox, timeout=1.0).charge(charge("pay_slow", cards.PM_TIMES_OUT))
    stats = httpx.get(f"{live_sandbox}/stats", params={"key": "pay_slow"}).json()
    assert stats["key"]["charges"] == 1


def test_sandbox_refunds_up_to_the_charge() -> None:
    _, gateway = sandbox()
    charged = gateway.charge(charge("pay_r", amount=100))
    assert charged.charge_id
    assert gateway.refund(RefundRequest("re_1", charged.charge_id, 60, "EUR")).status == "succeeded"
    too_much = gateway.refund(RefundRequest("re_2", charged.charge_id, 41, "EUR"))
    assert (too_much.status, too_much.failure_code) == ("failed", "amount_too_large")
    assert gateway.find_refund("re_1") is not None


def test_sandbox_error_rate_injects_5xx(recorder: Recorder) -> None:
    client, gateway = sandbox(sandbox_error_rate=1.0)
    outcomes = []
    for n in range(20):
        try:
            gateway.charge(charge(f"pay_e{n}"))
            outcomes.append("ok")
        except GatewayUnavailable:
            outcomes.append("5xx")
    assert outcomes == ["5xx"] * 20
    # Half were recorded before the error: the status check finds those.
    found = sum(gateway.find_charge(f"pay_e{n}") is not None for n in range(20))
    assert 0 < found < 20
    assert client.put("/config", json={"error_rate": 0}).json()["error_rate"] == 0


def test_sandbox_posts_signed_events(recorder: Recorder) -> None:
    secret = generate_secret()
    app = create_app(
        PaymentsSettings(
            sandbox_webhook_url=recorder.url + "/events", payments_gateway_webhook_secret=secret
        )
    )
    with TestClient(app) as client:
        client.post(
            "/v1/charges",
            json={"amount": 5, "currency": "USD", "payment_method": cards.PM_SUCCEEDS},
            headers={"Idempotency-Key": "pay_ev"},
        )
        deadline = time.monotonic() + 5
        while not recorder.seen and time.monotonic() < deadline:
            time.sleep(0.05)
    assert recorder.seen, "no event posted"
    posted = recorder.seen[0]
    verify(secret, posted.headers, posted.body)
    event = json.loads(posted.body)
    assert event["type"] == "charge.succeeded"
    assert event["data"]["key"] == "pay_ev"


# --- Stripe -------------------------------------------------------------------------------

INTENT = {
    "id": "pi_123",
    "object": "payment_intent",
    "status": "succeeded",
    "amount": 1999,
    "amount_received": 1999,
    "currency": "usd",
    "metadata": {"payment_id": "pay_abc"},
}


def stripe_gateway(recorder: Recorder) -> StripeGateway:
    return StripeGateway("sk_test_123", timeout=5, api_base=recorder.url)


def test_stripe_charge_is_a_confirmed_intent_keyed_by_the_payment(recorder: Recorder) -> None:
    recorder.replies.append((200, INTENT))
    result = stripe_gateway(recorder).charge(
        ChargeRequest("pay_abc", 1999, "USD", "pm_card_visa", "cus_9")
    )
    assert (result.status, result.charge_id, result.amount) == ("succeeded", "pi_123", 1999)
    sent = recorder.seen[0]
    assert (sent.method, sent.path) == ("POST", "/v1/payment_intents")
    assert sent.headers["idempotency-key"] == "pay_abc"
    assert sent.headers["authorization"] == "Bearer sk_test_123"
    assert sent.form["amount"] == ["1999"]
    assert sent.form["currency"] == ["usd"]
    assert sent.form["payment_method"] == ["pm_card_visa"]
    assert sent.form["confirm"] == ["true"]
    assert sent.form["customer"] == ["cus_9"]
    assert sent.form["metadata[payment_id]"] == ["pay_abc"]


def test_stripe_charge_reports_the_cards_brand_and_last_four(recorder: Recorder) -> None:
    charge_object = {
        "id": "ch_1",
        "object": "charge",
        "payment_method_details": {"type": "card", "card": {"brand": "visa", "last4": "4242"}},
    }
    recorder.replies.append((200, {**INTENT, "latest_charge": charge_object}))
    result = stripe_gateway(recorder).charge(
        ChargeRequest("pay_abc", 1999, "USD", "pm_card_visa", "cus_9")
    )
    assert (result.card_brand, result.card_last4) == ("visa", "4242")
    assert recorder.seen[0].form["expand[0]"] == ["latest_charge"]


def test_stripe_decline_is_a_failed_result(recorder: Recorder) -> None:
    error = {
        "error": {
            "type": "card_error",
            "code": "card_declined",
            "message": "Your card was declined.",
            "payment_intent": {**INTENT, "status": "requires_payment_method"},
        }
    }
    recorder.replies.append((402, error))
    result = stripe_gateway(recorder).charge(ChargeRequest("pay_d", 10, "USD", "pm_x", "c"))
    assert (result.status, result.failure_code, result.charge_id) == (
        "failed",
        "card_declined",
        "pi_123",
    )


def test_stripe_server_errors_and_silence_are_unknown_outcomes(recorder: Recorder) -> None:
    recorder.replies.append((500, {"error": {"type": "api_error", "message": "boom"}}))
    with pytest.raises(GatewayUnavailable):
        stripe_gateway(recorder).charge(ChargeRequest("pay_5", 10, "USD", "pm_x", "c"))
    nowhere = StripeGateway("sk_test_1", timeout=1, api_base="http://127.0.0.1:9")
    with pytest.raises(GatewayTimeout):
        nowhere.charge(ChargeRequest("pay_6", 10, "USD", "pm_x", "c"))


def test_stripe_status_check_searches_by_metadata(recorder: Recorder) -> None:
    page = {"object": "search_result", "data": [INTENT], "has_more": False, "url": "/v1/x"}
    recorder.replies += [(200, page), (200, {**page, "data": []})]
    gateway = stripe_gateway(recorder)
    found = gateway.find_charge("pay_abc")
    assert found is not None
    assert found.charge_id == "pi_123"
    assert gateway.find_charge("pay_none") is None
    sent = recorder.seen[0]
    assert (sent.method, sent.path) == ("GET", "/v1/payment_intents/search")
    assert sent.query["query"] == ["metadata['payment_id']:'pay_abc'"]


def test_stripe_refund_is_keyed_by_the_refund(recorder: Recorder) -> None:
    refund = {"id": "re_9", "object": "refund", "status": "succeeded", "amount": 500}
    recorder.replies.append((200, refund))
    result = stripe_gateway(recorder).refund(RefundRequest("re_local", "pi_123", 500, "USD"))
    assert (result.status, result.refund_id) == ("succeeded", "re_9")
    sent = recorder.seen[0]
    assert (sent.method, sent.path) == ("POST", "/v1/refunds")
    assert sent.headers["idempotency-key"] == "re_local"
    assert sent.form["payment_intent"] == ["pi_123"]
    assert sent.form["amount"] == ["500"]
    assert sent.form["metadata[refund_id]"] == ["re_local"]
