"""What a payment gateway must offer, and the errors that tell a task what to do next.

Every call carries an idempotency key (the payment or refund id): sending it again can
never move money twice. An error that leaves the outcome unknown (a timeout, a 5xx, a lost
connection) is `GatewayUnavailable`: the next attempt asks `find_charge` / `find_refund`
before sending anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from conveyor.core.errors import PermanentError, TransientError

Outcome = Literal["succeeded", "failed"]


class GatewayUnavailable(TransientError):
    """No answer we can trust (timeout, 5xx, connection): the outcome is unknown."""


class GatewayTimeout(GatewayUnavailable):
    """Sent, but no answer in time: the gateway may well have done it."""


class GatewayRejected(PermanentError):
    """The gateway refused the request itself (bad parameters, a key reused with others)."""


@dataclass(frozen=True)
class ChargeRequest:
    key: str  # the payment id
    amount: int
    currency: str
    payment_method: str
    customer_id: str


@dataclass(frozen=True)
class ChargeResult:
    status: Outcome
    charge_id: str | None
    amount: int = 0
    failure_code: str | None = None
    failure_message: str | None = None
    # What the gateway says the card is, for a payment method the API could not tell.
    card_brand: str | None = None
    card_last4: str | None = None


@dataclass(frozen=True)
class RefundRequest:
    key: str  # the refund id
    charge_id: str
    amount: int
    currency: str


@dataclass(frozen=True)
class RefundResult:
    status: Outcome
    refund_id: str | None
    amount: int = 0
    failure_code: str | None = None
    failure_message: str | None = None


class PaymentGateway(Protocol):
    def charge(self, request: ChargeRequest) -> ChargeResult:
        """Charge once per key; a decline is a `failed` result, not an error."""
        ...

    def find_charge(self, key: str) -> ChargeResult | None:
        """The outcome of the charge made under `key`; None if the gateway has none."""
        ...

    def refund(self, request: RefundRequest) -> RefundResult: ...

    def find_refund(self, key: str) -> RefundResult | None: ...
