"""Card numbers in, payment method ids stored: Luhn, brands, the sandbox's ids, refusals."""

from __future__ import annotations

import pytest
from sqlalchemy.orm import Session

from conveyor.workloads.payments import cards, service
from conveyor.workloads.payments.sandbox import core as sandbox
from conveyor.workloads.payments.sandbox.core import SandboxCore


@pytest.mark.parametrize(
    ("number", "brand"),
    [
        ("4242424242424242", "visa"),
        ("5555555555554444", "mastercard"),
        ("2223003122003222", "mastercard"),
        ("378282246310005", "amex"),
        ("6011111111111117", "discover"),
        ("3566002020360505", "jcb"),
        ("36227206271667", "diners"),
        ("6200000000000005", "unionpay"),
    ],
)
def test_stripe_test_numbers_pass_luhn_and_have_their_brand(number: str, brand: str) -> None:
    assert cards.luhn_valid(number)
    assert cards.brand_of(number) == brand


def test_the_sandbox_test_cards_become_its_payment_method_ids() -> None:
    assert cards.stored_method(sandbox.CARD_SUCCEEDS, "sandbox") == cards.StoredMethod(
        "pm_card_visa", "visa", "4242"
    )
    assert cards.stored_method("4000 0000 0000 0002", "sandbox") == cards.StoredMethod(
        sandbox.PM_DECLINED, "visa", "0002"
    )
    # Any other valid number: Stripe's per-brand test id, which succeeds.
    assert cards.stored_method("5555-5555-5555-4444", "sandbox") == cards.StoredMethod(
        "pm_card_mastercard", "mastercard", "4444"
    )
    for number, method in sandbox.TEST_CARD_IDS.items():
        assert cards.stored_method(number, "sandbox").reference == method


def test_payment_method_ids_pass_through_with_what_is_known_of_them() -> None:
    assert cards.stored_method("pm_card_visa", "stripe") == cards.StoredMethod(
        "pm_card_visa", "visa", "4242"
    )
    assert cards.stored_method("pm_1NabcDEFghi", "stripe") == cards.StoredMethod(
        "pm_1NabcDEFghi", None, None
    )


@pytest.mark.parametrize(
    ("raw", "gateway", "words"),
    [
        ("4242424242424242", "stripe", "card numbers are not accepted"),
        ("4242424242424241", "sandbox", "not a valid card number"),
        ("4242", "sandbox", "a payment method id such as pm_card_visa or a test card number"),
        ("visa please", "stripe", "a payment method id such as pm_card_visa"),
    ],
)
def test_what_the_gateway_cannot_take_is_refused_without_echoing_it(
    raw: str, gateway: str, words: str
) -> None:
    with pytest.raises(cards.BadPaymentMethod) as caught:
        cards.stored_method(raw, gateway)
    message = str(caught.value)
    assert message.startswith("payment_method: ")
    assert words in message
    assert raw not in message


def test_the_service_never_stores_a_card_number(session: Session) -> None:
    with pytest.raises(ValueError, match="never a card number"):
        service.create_payment(
            session,
            service.NewPayment("alice", "cus_1", 100, "USD", "4242 4242 4242 4242"),
            job_id="job",
        )


def test_the_sandbox_charges_ids_and_refuses_numbers() -> None:
    core = SandboxCore()
    params = {"amount": 100, "currency": "USD", "customer_id": "c"}
    refused = core.create_charge("pay_1", {**params, "payment_method": sandbox.CARD_SUCCEEDS})
    assert refused.status_code == 400
    assert sandbox.CARD_SUCCEEDS not in str(refused.body)
    charged = core.create_charge("pay_2", {**params, "payment_method": sandbox.PM_SUCCEEDS})
    assert charged.status_code == 200
    assert charged.body["charge"]["card"] == {"brand": "visa", "last4": "4242"}
    declined = core.create_charge("pay_3", {**params, "payment_method": sandbox.PM_DECLINED})
    assert declined.body["charge"]["failure_code"] == "card_declined"
    other = core.create_charge("pay_4", {**params, "payment_method": "pm_card_amex"})
    assert other.body["charge"]["status"] == "succeeded"
