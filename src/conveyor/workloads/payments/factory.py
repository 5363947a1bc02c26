"""The gateway the settings name, one per process (its HTTP connections are reused)."""

from __future__ import annotations

import os
import threading

from conveyor.core.extras import require
from conveyor.core.settings import section
from conveyor.workloads.payments.gateway import PaymentGateway
from conveyor.workloads.payments.sandbox.client import SandboxGateway
from conveyor.workloads.payments.settings import PaymentsSettings

_lock = threading.Lock()
_gateways: dict[tuple[int, str], PaymentGateway] = {}


class GatewayNotConfigured(RuntimeError):
    pass


def build_gateway(settings: PaymentsSettings) -> PaymentGateway:
    timeout = settings.payments_gateway_timeout_seconds
    if settings.payments_gateway == "stripe":
        if settings.stripe_api_key is None:
            raise GatewayNotConfigured(
                "CONVEYOR_PAYMENTS_GATEWAY=stripe needs CONVEYOR_STRIPE_API_KEY"
            )
        # The stripe package is an extra: imported only when it is the gateway.
        require("stripe", extra="stripe", what="CONVEYOR_PAYMENTS_GATEWAY=stripe")
        from conveyor.workloads.payments.stripe_gateway import StripeGateway

        return StripeGateway(
            settings.stripe_api_key.get_secret_value(),
            timeout=timeout,
            api_base=settings.stripe_api_base,
        )
    return SandboxGateway(settings.payments_gateway_url, timeout)


def get_gateway(settings: PaymentsSettings | None = None) -> PaymentGateway:
    settings = settings or section(PaymentsSettings)
    # Per process: an HTTP connection pool must not cross a fork.
    key = (os.getpid(), f"{settings.payments_gateway}:{settings.payments_gateway_url}")
    gateway = _gateways.get(key)
    if gateway is None:
        with _lock:
            gateway = _gateways.setdefault(key, build_gateway(settings))
    return gateway
