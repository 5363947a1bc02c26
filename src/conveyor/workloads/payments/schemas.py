"""Request and response bodies of the payments API."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from conveyor.workloads.payments import currencies

CUSTOMER_ID = r"^[A-Za-z0-9_.:\-]+$"


def _check_amount(value: Any, currency: str | None) -> int:
    """An integer of minor units, positive and within the currency's bound."""
    known = currency if currency in currencies.EXPONENTS else None
    hint = currencies.example(known) if known else "USD has 2 decimals, so 19.99 USD is 1999"
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"must be an integer number of minor units ({hint})")
    if value <= 0:
        raise ValueError("must be greater than zero")
    ceiling = currencies.max_amount(known) if known else currencies.LARGEST_AMOUNT
    if value > ceiling:
        raise ValueError(f"at most {ceiling}{' for ' + known if known else ''}")
    return value


class PaymentIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "amount": 1999,
                    "currency": "USD",
                    "customer_id": "cus_1",
                    "payment_method": "4242424242424242",
                }
            ]
        },
    )

    # Before `amount`: its check needs the currency's exponent.
    currency: str = Field(description="ISO 4217 code, e.g. USD, JPY, KWD.")
    amount: Any = Field(
        description="Integer minor units: 1999 is 19.99 USD, 1999 JPY, 1.999 KWD.",
        json_schema_extra={"type": "integer", "minimum": 1},
    )
    customer_id: str = Field(min_length=1, max_length=120, pattern=CUSTOMER_ID)
    payment_method: str = Field(
        min_length=1,
        max_length=100,
        description=(
            "A payment method id (`pm_...`). The sandbox also takes its test card numbers "
            "(4242424242424242...), kept only as brand and last four."
        ),
    )
    description: str | None = Field(default=None, max_length=500)

    @field_validator("currency")
    @classmethod
    def _currency(cls, value: str) -> str:
        return currencies.normalize(value)

    @field_validator("amount", mode="before")
    @classmethod
    def _amount(cls, value: Any, info: ValidationInfo) -> int:
        return _check_amount(value, info.data.get("currency"))


class RefundIn(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"amount": 500}]})

    amount: Any = Field(
        description="Integer minor units, in the payment's currency.",
        json_schema_extra={"type": "integer", "minimum": 1},
    )

    @field_validator("amount", mode="before")
    @classmethod
    def _amount(cls, value: Any) -> int:
        return _check_amount(value, None)


class CardOut(BaseModel):
    brand: str | None
    last4: str | None


class RefundSummary(BaseModel):
    id: str
    amount: int
    status: str
    job_id: str | None


class PaymentOut(BaseModel):
    id: str
    job_id: str | None
    status: str
    amount: int
    currency: str
    customer_id: str
    payment_method: str = Field(description="The gateway's payment method id.")
    card: CardOut | None = Field(description="Brand and last four digits, when known.")
    description: str | None
    amount_captured: int
    amount_refunded: int
    amount_refund_pending: int
    failure_code: str | None
    failure_message: str | None
    attempts: int
    created_at: str | None
    settled_at: str | None
    refunds: list[RefundSummary] | None = None


class PaymentPage(BaseModel):
    items: list[PaymentOut]
    next_cursor: str | None


class RefundOut(BaseModel):
    id: str
    payment_id: str
    amount: int
    currency: str
    status: str
    job_id: str | None
    failure_code: str | None
    failure_message: str | None
    created_at: str | None
    settled_at: str | None
