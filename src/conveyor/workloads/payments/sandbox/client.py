"""PaymentGateway implementations for the sandbox: over HTTP, and in process (for tests).

Both read the sandbox's answers through the same functions, so the in-process gateway
behaves as the HTTP one does, minus the network.
"""

from __future__ import annotations

from typing import Any

import httpx

from conveyor.workloads.payments.gateway import (
    ChargeRequest,
    ChargeResult,
    GatewayRejected,
    GatewayTimeout,
    GatewayUnavailable,
    RefundRequest,
    RefundResult,
)
from conveyor.workloads.payments.sandbox.core import SandboxCore


def charge_params(request: ChargeRequest) -> dict[str, Any]:
    return {
        "amount": request.amount,
        "currency": request.currency,
        "payment_method": request.payment_method,
        "customer_id": request.customer_id,
    }


def refund_params(request: RefundRequest) -> dict[str, Any]:
    return {"charge": request.charge_id, "amount": request.amount}


def _error_text(body: dict[str, Any]) -> str:
    error = body.get("error") or {}
    return f"{error.get('code', 'error')}: {error.get('message', '')}".strip()


def _check(status_code: int, body: dict[str, Any]) -> None:
    if status_code >= 500 or status_code == 429:
        raise GatewayUnavailable(f"gateway answered {status_code} ({_error_text(body)})")
    if status_code == 400:
        raise GatewayRejected(f"gateway refused the request: {_error_text(body)}")


def read_charge(status_code: int, body: dict[str, Any]) -> ChargeResult:
    _check(status_code, body)
    charge = body.get("charge")
    if not isinstance(charge, dict):
        raise GatewayUnavailable(f"gateway answered {status_code} without a charge")
    failed = charge.get("status") != "succeeded"
    card = charge.get("card")
    card = card if isinstance(card, dict) else {}
    return ChargeResult(
        status="failed" if failed else "succeeded",
        charge_id=charge.get("id"),
        amount=int(charge.get("amount") or 0),
        failure_code=charge.get("failure_code") if failed else None,
        failure_message=charge.get("failure_message") if failed else None,
        card_brand=card.get("brand"),
        card_last4=card.get("last4"),
    )


def read_refund(status_code: int, body: dict[str, Any]) -> RefundResult:
    if status_code == 400:
        error = body.get("error") or {}
        if error.get("code") in {"amount_too_large", "charge_not_refundable"}:
            # A definite no from the gateway: the refund failed, nothing moved.
            return RefundResult("failed", None, 0, error.get("code"), error.get("message"))
    _check(status_code, body)
    refund = body.get("refund")
    if not isinstance(refund, dict):
        raise GatewayUnavailable(f"gateway answered {status_code} without a refund")
    return RefundResult(
        status="succeeded" if refund.get("status") == "succeeded" else "failed",
        refund_id=refund.get("id"),
        amount=int(refund.get("amount") or 0),
    )


class SandboxGateway:
    """The sandbox over HTTP. The base URL is operator configuration (settings), like the
    database URL, so it is not put through the SSRF guard meant for user-given URLs."""

    def __init__(self, base_url: str, timeout: float, client: httpx.Client | None = None):
        self.base_url = base_url.rstrip("/")
        self.client = client or httpx.Client(timeout=timeout)

    def _send(self, method: str, path: str, **kwargs: Any) -> tuple[int, dict[str, Any]]:
        try:
            response = self.client.request(method, self.base_url + path, **kwargs)
        except httpx.TimeoutException as exc:
            raise GatewayTimeout(f"no answer from the gateway in time ({exc!r})") from exc
        except httpx.TransportError as exc:
            raise GatewayUnavailable(f"gateway unreachable ({exc!r})") from exc
        try:
            body = response.json()
        except ValueError:
            body = {}
        return response.status_code, body if isinstance(body, dict) else {}

    def charge(self, request: ChargeRequest) -> ChargeResult:
        headers = {"Idempotency-Key": request.key}
        status, body = self._send(
            "POST", "/v1/charges", json=charge_params(request), headers=headers
        )
        return read_charge(status, body)

    def find_charge(self, key: str) -> ChargeResult | None:
        status, body = self._send("GET", f"/v1/charges/by-key/{key}")
        return None if status == 404 else read_charge(status, body)

    def refund(self, request: RefundRequest) -> RefundResult:
        headers = {"Idempotency-Key": request.key}
        status, body = self._send(
            "POST", "/v1/refunds", json=refund_params(request), headers=headers
        )
        return read_refund(status, body)

    def find_refund(self, key: str) -> RefundResult | None:
        status, body = self._send("GET", f"/v1/refunds/by-key/{key}")
        return None if status == 404 else read_refund(status, body)


class InProcessGateway:
    """The sandbox's logic called directly; an answer slower than `timeout` is a timeout."""

    def __init__(self, core: SandboxCore, timeout: float = 10.0) -> None:
        self.core = core
        self.timeout = timeout

    def _late(self, delay: float) -> None:
        if delay >= self.timeout:
            raise GatewayTimeout("no answer from the gateway in time")

    def charge(self, request: ChargeRequest) -> ChargeResult:
        reply = self.core.create_charge(request.key, charge_params(request))
        self._late(reply.delay)
        return read_charge(reply.status_code, reply.body)

    def find_charge(self, key: str) -> ChargeResult | None:
        reply = self.core.find_charge(key)
        return None if reply.status_code == 404 else read_charge(reply.status_code, reply.body)

    def refund(self, request: RefundRequest) -> RefundResult:
        reply = self.core.create_refund(request.key, refund_params(request))
        self._late(reply.delay)
        return read_refund(reply.status_code, reply.body)

    def find_refund(self, key: str) -> RefundResult | None:
        reply = self.core.find_refund(key)
        return None if reply.status_code == 404 else read_refund(reply.status_code, reply.body)
