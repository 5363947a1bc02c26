"""The Stripe gateway, through the official `stripe` package.

A charge is a confirmed PaymentIntent created with `idempotency_key=<payment id>` and
`metadata[payment_id]`, so a repeated create returns the same intent and the status check
can find it by metadata. Refunds work the same way with the refund id.
"""

from __future__ import annotations

from typing import Any

import stripe

from conveyor.workloads.payments.gateway import (
    ChargeRequest,
    ChargeResult,
    GatewayRejected,
    GatewayTimeout,
    GatewayUnavailable,
    RefundRequest,
    RefundResult,
)

SUCCEEDED_INTENT = {"succeeded"}
# An intent in these states has not moved money and will not without the customer.
FAILED_INTENT = {"canceled", "requires_payment_method"}


class StripeGateway:
    def __init__(self, api_key: str, *, timeout: float, api_base: str | None = None) -> None:
        http_client = stripe.HTTPXClient(timeout=timeout, allow_sync_methods=True)
        bases: Any = {"api": api_base} if api_base else None
        self.client = stripe.StripeClient(
            api_key,
            base_addresses=bases,
            http_client=http_client,
            # Retries are the task's business: it asks for the status first.
            max_network_retries=0,
        )

    def charge(self, request: ChargeRequest) -> ChargeResult:
        params: Any = {
            "amount": request.amount,
            "currency": request.currency.lower(),
            "payment_method": request.payment_method,
            "confirm": True,
            "customer": request.customer_id if request.customer_id.startswith("cus_") else None,
            "metadata": {"payment_id": request.key, "customer_id": request.customer_id},
            "automatic_payment_methods": {"enabled": True, "allow_redirects": "never"},
            # The charge's card details: brand and last four for the payment's record.
            "expand": ["latest_charge"],
        }
        params = {name: value for name, value in params.items() if value is not None}
        try:
            intent = self.client.v1.payment_intents.create(
                params=params, options={"idempotency_key": request.key}
            )
        except stripe.CardError as exc:
            return ChargeResult(
                "failed", _intent_id(exc), 0, exc.code or "card_declined", exc.user_message
            )
        except stripe.StripeError as exc:
            raise _translate(exc) from exc
        return _charge_result(intent)

    def find_charge(self, key: str) -> ChargeResult | None:
        try:
            found = self.client.v1.payment_intents.search(
                params={
                    "query": f"metadata['payment_id']:'{key}'",
                    "limit": 1,
                    "expand": ["data.latest_charge"],
                }
            )
        except stripe.StripeError as exc:
            raise _translate(exc) from exc
        return _charge_result(found.data[0]) if found.data else None

    def refund(self, request: RefundRequest) -> RefundResult:
        try:
            refund = self.client.v1.refunds.create(
                params={
                    "payment_intent": request.charge_id,
                    "amount": request.amount,
                    "metadata": {"refund_id": request.key},
                },
                options={"idempotency_key": request.key},
            )
        except stripe.InvalidRequestError as exc:
            return RefundResult("failed", None, 0, exc.code or "invalid_request", exc.user_message)
        except stripe.StripeError as exc:
            raise _translate(exc) from exc
        return _refund_result(refund)

    def find_refund(self, key: str) -> RefundResult | None:
        # Refunds have no search; the metadata is checked on the recent ones.
        try:
            page = self.client.v1.refunds.list(params={"limit": 100})
        except stripe.StripeError as exc:
            raise _translate(exc) from exc
        for refund in page.data:
            metadata: dict[str, str] = dict(getattr(refund, "metadata", None) or {})
            if metadata.get("refund_id") == key:
                return _refund_result(refund)
        return None


def _intent_id(exc: stripe.StripeError) -> str | None:
    error = exc.error
    intent = getattr(error, "payment_intent", None) if error else None
    return getattr(intent, "id", None)


def _translate(exc: stripe.StripeError) -> Exception:
    if isinstance(exc, stripe.APIConnectionError):
        # Sent or not, nobody knows: the status check decides.
        return GatewayTimeout(f"stripe: {exc.user_message or exc}")
    if isinstance(exc, stripe.RateLimitError | stripe.APIError):
        return GatewayUnavailable(f"stripe: {exc.user_message or exc}")
    status = exc.http_status or 0
    if status >= 500:
        return GatewayUnavailable(f"stripe answered {status}: {exc.user_message or exc}")
    return GatewayRejected(f"stripe refused the request: {exc.user_message or exc}")


def _charge_result(intent: Any) -> ChargeResult:
    status = intent.status
    if status in SUCCEEDED_INTENT:
        brand, last4 = _card_of(intent)
        amount = int(intent.amount_received or intent.amount)
        return ChargeResult("succeeded", intent.id, amount, card_brand=brand, card_last4=last4)
    if status in FAILED_INTENT:
        error = intent.last_payment_error
        code = getattr(error, "code", None) or "payment_failed"
        return ChargeResult("failed", intent.id, 0, code, getattr(error, "message", None))
    # processing, requires_action...: not settled yet; ask again later.
    raise GatewayUnavailable(f"stripe: payment intent {intent.id} is still {status}")


def _card_of(intent: Any) -> tuple[str | None, str | None]:
    """Brand and last four from the expanded `latest_charge`, if Stripe sent it."""
    charge = getattr(intent, "latest_charge", None)
    details = getattr(charge, "payment_method_details", None)
    card = getattr(details, "card", None)
    if card is None:
        return None, None
    return getattr(card, "brand", None), getattr(card, "last4", None)


def _refund_result(refund: Any) -> RefundResult:
    if refund.status == "succeeded":
        return RefundResult("succeeded", refund.id, int(refund.amount))
    if refund.status in {"failed", "canceled"}:
        return RefundResult("failed", refund.id, 0, refund.failure_reason or "refund_failed")
    raise GatewayUnavailable(f"stripe: refund {refund.id} is still {refund.status}")
