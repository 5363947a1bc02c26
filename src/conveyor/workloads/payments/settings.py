"""The payments workload's settings: which gateway, its timeouts and retries, the sandbox."""

from __future__ import annotations

from typing import Literal, Self

from pydantic import Field, SecretStr, model_validator

from conveyor.core.extras import MissingExtra, missing
from conveyor.core.settings import Settings, SettingsSection

# The name `conveyor up` records the sandbox gateway it started under (Runtime.urls).
SANDBOX_URL = "payments_sandbox"


class PaymentsSettings(SettingsSection):
    payments_gateway: Literal["sandbox", "stripe"] = Field(
        default="sandbox",
        description="Which gateway moves the money: sandbox (local, `up` starts it) or stripe.",
    )
    # Operator configuration, like the database URL: loopback is fine here.
    payments_gateway_url: str = Field(
        default="http://127.0.0.1:8010",
        description="URL of the sandbox gateway; unset: the one a running `conveyor up` started.",
    )
    payments_gateway_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        le=120,
        description="Seconds a gateway call waits; an unanswered charge is checked, never resent.",
    )
    payments_gateway_webhook_secret: SecretStr | None = Field(
        default=None,
        description="Shared with the gateway: signs its events to /api/v1/payments/gateway-events.",
    )
    stripe_api_key: SecretStr | None = Field(
        default=None, description="Stripe secret key; needed when the gateway is stripe."
    )
    stripe_api_base: str | None = Field(
        default=None,
        description="Another Stripe API address (a recording server in tests); unset: Stripe.",
    )
    payments_retry_max: int = Field(
        default=8,
        ge=0,
        le=50,
        description="Retries of an unanswered charge or refund before it goes to requires_review.",
    )
    payments_backoff_max_seconds: float = Field(
        default=60.0,
        gt=0,
        description="Longest wait between payment retries (seconds), within retry_backoff_max.",
    )
    payments_reconcile_interval_seconds: float = Field(
        default=60.0,
        ge=1,
        le=86_400,
        description="Seconds between Beat's sweeps for stuck payments and refunds.",
    )
    payments_stuck_after_seconds: float = Field(
        default=900.0,
        ge=1,
        description="Seconds in processing (or unstarted) after which the sweep settles a payment.",
    )
    sandbox_gateway_host: str = Field(
        default="127.0.0.1",
        description="Address the sandbox gateway (started by `conveyor up`) listens on.",
    )
    sandbox_gateway_port: int = Field(
        default=8010, ge=1, le=65535, description="Port the sandbox gateway listens on."
    )
    sandbox_latency_ms: float = Field(
        default=0.0,
        ge=0,
        le=60_000,
        description="Milliseconds the sandbox gateway waits before each answer.",
    )
    sandbox_error_rate: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="Share of sandbox answers that are 5xx: half before charging, half after.",
    )
    # Longer than the client waits (payments_gateway_timeout_seconds).
    sandbox_slow_seconds: float = Field(
        default=15.0,
        ge=0,
        le=600,
        description="How late the sandbox's times-out test card answers (after charging).",
    )
    sandbox_webhook_url: str | None = Field(
        default=None, description="Where the sandbox posts its signed events; unset: it posts none."
    )

    @model_validator(mode="after")
    def _gateway_installed(self) -> Self:
        # Refused when the settings are read at start-up, not at the first charge.
        absent = missing(("stripe",)) if self.payments_gateway == "stripe" else None
        if absent is not None:
            raise MissingExtra("stripe", "CONVEYOR_PAYMENTS_GATEWAY=stripe", absent)
        return self

    def resolve(self, settings: Settings) -> Self:
        # A worker started apart from `conveyor up` still finds the sandbox gateway it runs.
        runtime = settings.runtime
        found = runtime.urls.get(SANDBOX_URL) if runtime is not None else None
        if found is None or "payments_gateway_url" in self.model_fields_set:
            return self
        return self.model_copy(update={"payments_gateway_url": found})
