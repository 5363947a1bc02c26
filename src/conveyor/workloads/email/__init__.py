"""Email: templated mail over SMTP, rate-limited, with bounces, suppressions and bulk sends."""

from __future__ import annotations

from typing import Any

from conveyor.core.settings import Settings, section
from conveyor.core.workloads import Workload, periodic
from conveyor.workloads.email.settings import EmailSettings


def beat(settings: Settings) -> dict[str, Any]:
    interval = section(EmailSettings).email_dispatch_interval_seconds
    # Scheduled emails (send_at) too far ahead for a countdown are published when due.
    return {"email-dispatch-due": periodic("conveyor.workloads.email.dispatch_due", interval)}


workload = Workload(
    name="email",
    tasks="conveyor.workloads.email.tasks",
    queues={"email": ("conveyor.workloads.email.*",)},
    api="conveyor.workloads.email.api",
    beat="conveyor.workloads.email:beat",
    settings="conveyor.workloads.email.settings:EmailSettings",
    extra="email",
    needs=("jinja2", "email_validator"),
)
