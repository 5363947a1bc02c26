"""The payments API's answers to bad input, owner scoping and gateway events (SQLite,
no broker: nothing here reaches the point of queueing a job)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

from conveyor.api.app import create_app
from conveyor.core import api_keys, db
from conveyor.core.models import Base
from conveyor.core.settings import get_settings
from conveyor.webhooks.signing import generate_secret, signature_headers
from conveyor.workloads.payments import service
from conveyor.workloads.payments.models import GatewayEvent, Payment

SECRET = generate_secret()


@dataclass
class Api:
    client: TestClient
    alice: str
    bob: str

    def post(self, path: str, body: Any, key: str | None = "new", as_: str = "") -> Any:
        headers = {"Authorization": f"Bearer {as_ or self.alice}"}
        if key is not None:
            headers["Idempotency-Key"] = str(uuid.uuid4()) if key == "new" else key
        return self.client.post(path, json=body, headers=headers)

    def get(self, path: str, as_: str = "") -> Any:
        return self.client.get(path, headers={"Authorization": f"Bearer {as_ or self.alice}"})


@pytest.fixture
def api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Api]:
    monkeypatch.setenv("CONVEYOR_DATABASE_URL", f"sqlite:///{tmp_path / 'api.db'}")
    monkeypatch.setenv("CONVEYOR_PAYMENTS_GATEWAY_WEBHOOK_SECRET", SECRET)
    monkeypatch.setenv("CONVEYOR_API_RATE_LIMIT_PER_MINUTE", "0")
    # Limits that would reach for Redis, which is not there: a miss would read as an outage.
    monkeypatch.setenv("CONVEYOR_API_AUTH_FAILURES_PER_MINUTE", "0")
    # A closed port: the app is built with a broker URL, and nothing here publishes.
    monkeypatch.setenv("CONVEYOR_REDIS_URL", "redis://127.0.0.1:1/0")
    get_settings.cache_clear()
    Base.metadata.create_all(db.get_engine())
    with db.session_scope() as session:
        alice = api_keys.create_key(session, "alice", owner="alice").plaintext
        bob = api_keys.create_key(session, "bob", owner="bob").plaintext
    with TestClient(create_app()) as client:
        yield Api(client, alice, bob)


def captured(owner: str, amount: int = 100, currency: str = "USD") -> str:
    """A payment that succeeded, straight in the database."""
    with db.session_scope() as session:
        new = service.NewPayment(owner, "cus_1", amount, currency, "pm_card_visa")
        payment = service.create_payment(session, new, job_id="job")
        session.execute(
            update(Payment)
            .where(Payment.id == payment.id)
            .values(state="succeeded", amount_captured=amount)
        )
        return payment.id


CARD = "4242424242424242"
GOOD = {"amount": 1999, "currency": "USD", "customer_id": "cus_1", "payment_method": CARD}


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"amount": -5}, "amount", "greater than zero"),
        ({"amount": 0}, "amount", "greater than zero"),
        ({"amount": 19.99}, "amount", "19.99 USD is 1999"),
        ({"amount": 10.5, "currency": "JPY"}, "amount", "integer number of minor units"),
        ({"amount": 1.5, "currency": "KWD"}, "amount", "KWD has 3 decimals"),
        ({"amount": "1999"}, "amount", "integer"),
        ({"amount": True}, "amount", "integer"),
        ({"amount": 10**15}, "amount", "at most 100000000000 for USD"),
        ({"currency": "XYZ"}, "currency", "unknown ISO 4217 currency"),
        ({"currency": "US"}, "currency", "unknown ISO 4217 currency"),
        ({"customer_id": ""}, "customer_id", ""),
        ({"payment_method": ""}, "payment_method", ""),
        ({"payment_method": "4242"}, "payment_method", "payment method id such as pm_card_visa"),
        ({"payment_method": "4242424242424241"}, "payment_method", "not a valid card number"),
        ({"surprise": 1}, "surprise", "unknown field"),
    ],
)
def test_bad_payment_is_422_naming_the_field(
    api: Api, change: dict[str, Any], field: str, words: str
) -> None:
    response = api.post("/api/v1/payments", {**GOOD, **change})
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert detail.startswith(f"{field}:") or f"; {field}:" in detail, detail
    assert words in detail


def test_stripe_refuses_a_raw_card_number_without_echoing_it(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONVEYOR_PAYMENTS_GATEWAY", "stripe")
    get_settings.cache_clear()
    for number in (CARD, "4242 4242 4242 4242"):
        response = api.post("/api/v1/payments", {**GOOD, "payment_method": number})
        assert response.status_code == 422, response.text
        detail = response.json()["detail"]
        assert detail.startswith("payment_method: card numbers are not accepted")
        assert "pm_" in detail
        assert "4242" not in response.text
    with db.session_scope() as session:
        assert session.scalar(select(func.count()).select_from(Payment)) == 0


def test_missing_amount_and_currency_are_both_named(api: Api) -> None:
    response = api.post("/api/v1/payments", {"customer_id": "c", "payment_method": CARD})
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert "amount: Field required" in detail
    assert "currency: Field required" in detail


def test_payment_without_idempotency_key_is_400_naming_it(api: Api) -> None:
    response = api.post("/api/v1/payments", GOOD, key=None)
    assert response.status_code == 400
    assert "Idempotency-Key" in response.json()["detail"]
    refund = api.post(f"/api/v1/payments/{captured('alice')}/refunds", {"amount": 1}, key=None)
    assert refund.status_code == 400
    assert "Idempotency-Key" in refund.json()["detail"]


def test_refund_above_what_is_left_is_422_naming_amount(api: Api) -> None:
    payment_id = captured("alice", amount=1000, currency="KWD")
    response = api.post(f"/api/v1/payments/{payment_id}/refunds", {"amount": 1001})
    assert response.status_code == 422
    assert response.json()["detail"] == (
        "amount: 1.001 KWD is more than can still be refunded (1.000 KWD)"
    )
    for bad in (0, -1, 2.5):
        refused = api.post(f"/api/v1/payments/{payment_id}/refunds", {"amount": bad})
        assert refused.status_code == 422
        assert refused.json()["detail"].startswith("amount:")


def test_refund_of_a_pending_payment_is_409(api: Api) -> None:
    with db.session_scope() as session:
        new = service.NewPayment("alice", "c", 100, "USD", "pm_card_visa")
        payment_id = service.create_payment(session, new, job_id="job").id
    response = api.post(f"/api/v1/payments/{payment_id}/refunds", {"amount": 10})
    assert response.status_code == 409
    assert "pending" in response.json()["detail"]


def test_another_owners_payment_is_404(api: Api) -> None:
    payment_id = captured("alice")
    assert api.get(f"/api/v1/payments/{payment_id}").status_code == 200
    assert api.get(f"/api/v1/payments/{payment_id}", as_=api.bob).status_code == 404
    refund = api.post(f"/api/v1/payments/{payment_id}/refunds", {"amount": 1}, as_=api.bob)
    assert refund.status_code == 404
    listed = api.get("/api/v1/payments", as_=api.bob).json()
    assert listed["items"] == []
    assert api.get("/api/v1/payments/review", as_=api.bob).status_code == 403


def test_list_filters_and_pages(api: Api) -> None:
    ids = [captured("alice") for _ in range(3)]
    first = api.get("/api/v1/payments?limit=2&status=succeeded").json()
    assert len(first["items"]) == 2
    second = api.get(f"/api/v1/payments?limit=2&cursor={first['next_cursor']}").json()
    assert {p["id"] for p in first["items"] + second["items"]} == set(ids)
    assert second["next_cursor"] is None
    assert api.get("/api/v1/payments?customer_id=nobody").json()["items"] == []
    assert api.get("/api/v1/payments?cursor=nonsense").status_code == 400
    assert api.get("/api/v1/payments?status=lost").status_code == 422


def gateway_event(event: dict[str, Any], secret: str = SECRET) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(event).encode()
    return body, {
        "content-type": "application/json",
        **signature_headers(secret, event["id"], body),
    }


def test_gateway_events_are_verified_and_applied_once(api: Api) -> None:
    with db.session_scope() as session:
        new = service.NewPayment("alice", "c", 250, "USD", "pm_card_visa")
        payment_id = service.create_payment(session, new, job_id="job").id
    event = {
        "id": f"evt_{uuid.uuid4().hex}",
        "type": "charge.succeeded",
        "data": {"id": "ch_1", "key": payment_id, "amount": 250, "status": "succeeded"},
    }
    body, headers = gateway_event(event)
    path = "/api/v1/payments/gateway-events"

    forged_body, forged = gateway_event(event, secret=generate_secret())
    refused = api.client.post(path, content=forged_body, headers=forged)
    assert refused.status_code == 401
    assert refused.json()["detail"].startswith("signature:")
    tampered = api.client.post(path, content=body.replace(b"250", b"999"), headers=headers)
    assert tampered.status_code == 401

    first = api.client.post(path, content=body, headers=headers)
    assert first.json() == {"id": event["id"], "duplicate": False, "outcome": "settled"}
    again = api.client.post(path, content=body, headers=headers)
    assert again.json() == {"id": event["id"], "duplicate": True, "outcome": "duplicate"}

    payment = api.get(f"/api/v1/payments/{payment_id}").json()
    assert (payment["status"], payment["amount_captured"]) == ("succeeded", 250)
    with db.session_scope() as session:
        assert service.balance_of(session, payment_id) == 250
        stored = session.get(GatewayEvent, event["id"])
        assert stored is not None
        assert stored.payment_id == payment_id
