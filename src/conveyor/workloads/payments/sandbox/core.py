"""The sandbox gateway's logic, without HTTP: charges, refunds, idempotency, test cards.

State is kept in memory, guarded by one lock: the sandbox is a test double that starts
empty with each run (like a fresh Stripe test account), and memory keeps it fast enough to
never be the bottleneck of a benchmark. The HTTP app (`app.py`) and the in-process gateway
(`local.py`) both drive this class, so tests of either see the same behaviour.

Idempotency follows Stripe: the same key with the same parameters gets the first response
again; with other parameters, a 400. Injected errors before a charge is recorded store
nothing (a retry charges); errors after it store the real response (a retry replays it).

Like Stripe, the sandbox charges payment method ids, never card numbers (a number is a
400). Conveyor's API turns a test card number into the sandbox's id for it when the payment
is submitted (`payments.cards`), so the number itself is never stored or sent on.
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

# Test card numbers, after Stripe's where Stripe has one.
CARD_SUCCEEDS = "4242424242424242"
CARD_DECLINED = "4000000000000002"
CARD_INSUFFICIENT_FUNDS = "4000000000009995"
# The first attempt per key answers 500 after a delay, without charging; later ones charge.
CARD_FAILS_ONCE = "4000000000000119"
# Charges, then answers `slow_seconds` later: a client with a shorter timeout never hears,
# and only the status check can find the charge.
CARD_TIMES_OUT = "4000000000006975"

# The payment method id of each test card: Stripe's own test ids where Stripe has one.
PM_SUCCEEDS = "pm_card_visa"
PM_DECLINED = "pm_card_visa_chargeDeclined"
PM_INSUFFICIENT_FUNDS = "pm_card_visa_chargeDeclinedInsufficientFunds"
PM_FAILS_ONCE = "pm_card_sandbox_failsOnce"
PM_TIMES_OUT = "pm_card_sandbox_timesOut"
TEST_CARD_IDS = {
    CARD_SUCCEEDS: PM_SUCCEEDS,
    CARD_DECLINED: PM_DECLINED,
    CARD_INSUFFICIENT_FUNDS: PM_INSUFFICIENT_FUNDS,
    CARD_FAILS_ONCE: PM_FAILS_ONCE,
    CARD_TIMES_OUT: PM_TIMES_OUT,
}
# Any other `pm_card_<brand>` (pm_card_mastercard...) succeeds, as in Stripe's test mode.
ID_PREFIX = "pm_card_"
# Brand and last four of the ids above, and of Stripe's per-brand test ids.
ID_CARDS: dict[str, tuple[str, str]] = {
    **{pm: ("visa", number[-4:]) for number, pm in TEST_CARD_IDS.items()},
    "pm_card_mastercard": ("mastercard", "4444"),
    "pm_card_amex": ("amex", "0005"),
    "pm_card_discover": ("discover", "1117"),
}

DECLINES = {
    PM_DECLINED: ("card_declined", "Your card was declined."),
    PM_INSUFFICIENT_FUNDS: ("insufficient_funds", "Your card has insufficient funds."),
}
FAILS_ONCE_DELAY_SECONDS = 0.5


@dataclass
class Reply:
    status_code: int
    body: dict[str, Any]
    # Extra seconds before the answer (on top of the configured latency).
    delay: float = 0.0
    # Events to post to the webhook URL, if one is configured.
    events: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Charge:
    id: str
    key: str
    amount: int
    currency: str
    payment_method: str
    customer_id: str
    status: str
    failure_code: str | None = None
    failure_message: str | None = None
    amount_refunded: int = 0

    def public(self) -> dict[str, Any]:
        out = asdict(self)
        brand, last4 = ID_CARDS.get(self.payment_method, (None, None))
        out["card"] = {"brand": brand, "last4": last4} if brand else None
        out["object"] = "charge"
        return out


@dataclass
class RefundRecord:
    id: str
    key: str
    charge: str
    amount: int
    currency: str
    status: str = "succeeded"

    def public(self) -> dict[str, Any]:
        return {**asdict(self), "object": "refund"}


@dataclass
class Config:
    latency_ms: float = 0.0
    error_rate: float = 0.0
    slow_seconds: float = 15.0
    # Post events to the webhook URL (tests turn this off to see the task settle alone).
    send_events: bool = True


def _fingerprint(params: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()


def _error(status_code: int, code: str, message: str) -> Reply:
    return Reply(status_code, {"error": {"code": code, "message": message}})


class SandboxCore:
    def __init__(self, config: Config | None = None, rng: random.Random | None = None) -> None:
        self.config = config or Config()
        self.rng = rng or random.Random()
        self._lock = threading.Lock()
        self._charges: dict[str, Charge] = {}  # by key
        self._charge_ids: dict[str, Charge] = {}
        self._refunds: dict[str, RefundRecord] = {}  # by key
        # (kind, key) -> (fingerprint, the stored reply)
        self._replies: dict[tuple[str, str], tuple[str, Reply]] = {}
        self._failed_once: set[str] = set()
        self.charges_created: Counter[str] = Counter()
        self.charge_requests: Counter[str] = Counter()
        self.status_checks: Counter[str] = Counter()
        self.refunds_created: Counter[str] = Counter()

    # --- charges ---------------------------------------------------------------------------

    def create_charge(self, key: str, params: dict[str, Any]) -> Reply:
        """`params`: amount, currency, payment_method, customer_id."""
        problem = _check_charge_params(params)
        if problem is not None:
            return problem
        fingerprint = _fingerprint(params)
        with self._lock:
            self.charge_requests[key] += 1
            stored = self._replies.get(("charge", key))
            if stored is not None:
                return _replay(stored, fingerprint, key)
            method = str(params["payment_method"])
            if method == PM_FAILS_ONCE and key not in self._failed_once:
                self._failed_once.add(key)
                failed = _error(500, "processing_error", "a processing error; try again")
                failed.delay = FAILS_ONCE_DELAY_SECONDS
                return failed
            injected = self._injected_error()
            if injected == "before":
                return _error(503, "injected_error", "the gateway is unavailable")
            charge = self._record_charge(key, params)
            reply = Reply(200 if charge.status == "succeeded" else 402, {"charge": charge.public()})
            if charge.status == "failed":
                reply.body["error"] = {
                    "code": charge.failure_code,
                    "message": charge.failure_message,
                }
            reply.events = [_event(f"charge.{charge.status}", charge.public())]
            self._replies[("charge", key)] = (fingerprint, reply)
            if method == PM_TIMES_OUT:
                return Reply(reply.status_code, reply.body, self.config.slow_seconds, reply.events)
            if injected == "after":
                return Reply(500, {"error": {"code": "injected_error"}}, 0.0, reply.events)
            return reply

    def find_charge(self, key: str) -> Reply:
        with self._lock:
            self.status_checks[key] += 1
            charge = self._charges.get(key)
            if charge is None:
                return _error(404, "resource_missing", f"no charge with idempotency key {key}")
            return Reply(200, {"charge": charge.public()})

    def _record_charge(self, key: str, params: dict[str, Any]) -> Charge:
        method = str(params["payment_method"])
        decline = DECLINES.get(method)
        charge = Charge(
            id=f"ch_{uuid.uuid4().hex[:24]}",
            key=key,
            amount=int(params["amount"]),
            currency=str(params["currency"]),
            payment_method=method,
            customer_id=str(params.get("customer_id") or ""),
            status="failed" if decline else "succeeded",
            failure_code=decline[0] if decline else None,
            failure_message=decline[1] if decline else None,
        )
        self._charges[key] = charge
        self._charge_ids[charge.id] = charge
        self.charges_created[key] += 1
        return charge

    def _injected_error(self) -> str | None:
        if self.config.error_rate <= 0 or self.rng.random() >= self.config.error_rate:
            return None
        return "before" if self.rng.random() < 0.5 else "after"

    # --- refunds ---------------------------------------------------------------------------

    def create_refund(self, key: str, params: dict[str, Any]) -> Reply:
        """`params`: charge (its id), amount."""
        amount = params.get("amount")
        if not isinstance(amount, int) or isinstance(amount, bool) or amount <= 0:
            return _error(400, "parameter_invalid", "amount: a positive integer")
        fingerprint = _fingerprint(params)
        with self._lock:
            stored = self._replies.get(("refund", key))
            if stored is not None:
                return _replay(stored, fingerprint, key)
            injected = self._injected_error()
            if injected == "before":
                return _error(503, "injected_error", "the gateway is unavailable")
            charge = self._charge_ids.get(str(params.get("charge")))
            if charge is None or charge.status != "succeeded":
                reply = _error(400, "charge_not_refundable", "no succeeded charge with this id")
            elif amount > charge.amount - charge.amount_refunded:
                left = charge.amount - charge.amount_refunded
                reply = _error(400, "amount_too_large", f"at most {left} can still be refunded")
            else:
                charge.amount_refunded += amount
                refund = RefundRecord(
                    id=f"re_{uuid.uuid4().hex[:24]}",
                    key=key,
                    charge=charge.id,
                    amount=amount,
                    currency=charge.currency,
                )
                self._refunds[key] = refund
                self.refunds_created[key] += 1
                reply = Reply(200, {"refund": refund.public()})
                reply.events = [_event("refund.succeeded", refund.public())]
            self._replies[("refund", key)] = (fingerprint, reply)
            if injected == "after":
                return Reply(500, {"error": {"code": "injected_error"}}, 0.0, reply.events)
            return reply

    def find_refund(self, key: str) -> Reply:
        with self._lock:
            self.status_checks[key] += 1
            refund = self._refunds.get(key)
            if refund is None:
                return _error(404, "resource_missing", f"no refund with idempotency key {key}")
            return Reply(200, {"refund": refund.public()})

    # --- for tests and benchmarks ----------------------------------------------------------

    def stats(self, key: str | None = None) -> dict[str, Any]:
        with self._lock:
            charges = list(self._charges.values())
            out: dict[str, Any] = {
                "charges": sum(self.charges_created.values()),
                "succeeded": sum(1 for c in charges if c.status == "succeeded"),
                "declined": sum(1 for c in charges if c.status == "failed"),
                "amount_captured": sum(c.amount for c in charges if c.status == "succeeded"),
                "refunds": sum(self.refunds_created.values()),
                "amount_refunded": sum(r.amount for r in self._refunds.values()),
                "duplicate_charges": sum(n - 1 for n in self.charges_created.values() if n > 1),
            }
            if key is not None:
                out["key"] = {
                    "charges": self.charges_created[key],
                    "charge_requests": self.charge_requests[key],
                    "status_checks": self.status_checks[key],
                    "refunds": self.refunds_created[key],
                }
            return out


def _check_charge_params(params: dict[str, Any]) -> Reply | None:
    amount = params.get("amount")
    if not isinstance(amount, int) or isinstance(amount, bool) or amount <= 0:
        return _error(400, "parameter_invalid", "amount: a positive integer")
    method = params.get("payment_method")
    if not isinstance(params.get("currency"), str) or not method:
        return _error(400, "parameter_missing", "currency and payment_method are required")
    if not isinstance(method, str) or not method.startswith(ID_PREFIX):
        # Never echo it: it may be a card number.
        return _error(
            400,
            "payment_method_invalid",
            f"payment_method: no such payment method; send a test id such as {PM_SUCCEEDS}",
        )
    return None


def _replay(stored: tuple[str, Reply], fingerprint: str, key: str) -> Reply:
    first, reply = stored
    if first != fingerprint:
        return _error(
            400,
            "idempotency_error",
            f"key {key} was used with other parameters; use a new key for a new request",
        )
    return Reply(reply.status_code, reply.body)


def _event(event_type: str, data: dict[str, Any]) -> dict[str, Any]:
    return {"id": f"evt_{uuid.uuid4().hex}", "type": event_type, "data": data}
