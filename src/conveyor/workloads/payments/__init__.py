"""Payments: idempotent charges and refunds through a gateway, with a balance ledger."""

from __future__ import annotations

from typing import Any

from conveyor.core.settings import Settings, section
from conveyor.core.workloads import Workload, periodic
from conveyor.workloads.payments.settings import PaymentsSettings


def beat(settings: Settings) -> dict[str, Any]:
    interval = section(PaymentsSettings).payments_reconcile_interval_seconds
    # Payments and refunds stuck between the gateway and the ledger are swept and settled.
    return {"payments-reconcile": periodic("conveyor.workloads.payments.reconcile", interval)}


workload = Workload(
    name="payments",
    tasks="conveyor.workloads.payments.tasks",
    queues={"payments": ("conveyor.workloads.payments.*",)},
    api="conveyor.workloads.payments.api",
    beat="conveyor.workloads.payments:beat",
    settings="conveyor.workloads.payments.settings:PaymentsSettings",
    extra="payments",
)
