"""What a payment keeps of its card: the gateway's payment method id, the brand and the last
four digits. A full card number is never stored, logged or sent to a worker.

With Stripe, cards are collected by Stripe.js or Elements and reach us as PaymentMethod ids
(`pm_...`); a raw number is refused. The sandbox accepts its test card numbers as Stripe's
docs list them, and the API swaps each for the sandbox's payment method id at once, the way
Stripe.js tokenises a card before the server sees it: the worker charges the id, and the
sandbox decides the outcome from it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from conveyor.workloads.payments.sandbox.core import ID_CARDS, ID_PREFIX, TEST_CARD_IDS

# Digits, optionally grouped by spaces or hyphens, as people type them.
_NUMBER = re.compile(r"[0-9][0-9 -]*[0-9]")
_METHOD_ID = re.compile(r"(pm|card|src)_[A-Za-z0-9_]{1,95}")
# ISO/IEC 7812 lengths of card numbers in use.
MIN_DIGITS, MAX_DIGITS = 12, 19
# (brand, issuer prefixes as inclusive ranges of the first digits)
_BRANDS: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = (
    ("amex", (("34", "34"), ("37", "37"))),
    ("diners", (("300", "305"), ("36", "36"), ("38", "39"))),
    ("discover", (("6011", "6011"), ("644", "649"), ("65", "65"))),
    ("jcb", (("3528", "3589"),)),
    ("mastercard", (("51", "55"), ("2221", "2720"))),
    ("unionpay", (("62", "62"),)),
    ("visa", (("4", "4"),)),
)


class BadPaymentMethod(ValueError):
    """A payment method the gateway cannot take; the message names the field, never the
    number."""


@dataclass(frozen=True)
class StoredMethod:
    reference: str  # what the gateway charges: a payment method id
    brand: str | None
    last4: str | None


def card_digits(text: str) -> str | None:
    """The digits of `text` if it is written like a card number, else None."""
    if not _NUMBER.fullmatch(text):
        return None
    digits = text.replace(" ", "").replace("-", "")
    return digits if MIN_DIGITS <= len(digits) <= MAX_DIGITS else None


def luhn_valid(digits: str) -> bool:
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char) * (2 if position % 2 else 1)
        total += value - 9 if value > 9 else value
    return total % 10 == 0


def brand_of(digits: str) -> str:
    for brand, ranges in _BRANDS:
        for low, high in ranges:
            if low <= digits[: len(low)] <= high:
                return brand
    return "unknown"


def sandbox_id(digits: str) -> str:
    """The sandbox's payment method id for a test card number: its own for the special
    cards, else Stripe's per-brand test id (which succeeds)."""
    return TEST_CARD_IDS.get(digits) or f"{ID_PREFIX}{brand_of(digits)}"


def stored_method(raw: str, gateway: str) -> StoredMethod:
    """What to keep for `raw`, the `payment_method` a client sent; BadPaymentMethod if the
    configured gateway cannot take it."""
    digits = card_digits(raw)
    if digits is None:
        if not _METHOD_ID.fullmatch(raw):
            raise BadPaymentMethod(
                "payment_method: expected a payment method id such as pm_card_visa"
                + (" or a test card number" if gateway == "sandbox" else "")
            )
        brand, last4 = ID_CARDS.get(raw, (None, None))
        return StoredMethod(raw, brand, last4)
    if gateway != "sandbox":
        raise BadPaymentMethod(
            "payment_method: card numbers are not accepted; collect the card with Stripe.js "
            "or Elements and send its PaymentMethod id (pm_...)"
        )
    if not luhn_valid(digits):
        raise BadPaymentMethod("payment_method: not a valid card number (check digit)")
    return StoredMethod(sandbox_id(digits), brand_of(digits), digits[-4:])
