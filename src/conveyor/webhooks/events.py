"""The event types endpoints can subscribe to; workloads add their own.

A workload registers its events in a module the API imports (its router module, say), so
that registering an endpoint for them validates: `register_event_type("email.sent", "...")`.
"""

from __future__ import annotations

import re
import threading

JOB_EVENTS = {
    "job.succeeded": "A job finished successfully.",
    "job.failed": "A job failed (a workflow with a failed step, a job the broker refused).",
    "job.dead": "A job failed for good and is now a dead letter.",
    "job.cancelled": "A job was cancelled.",
}
ENDPOINT_DISABLED = "endpoint.disabled"
# Sent by POST /webhook-endpoints/{id}/test whatever the endpoint subscribes to.
TEST_EVENT = "webhook.test"

NAME = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")

_lock = threading.Lock()
_event_types: dict[str, str] = {
    **JOB_EVENTS,
    ENDPOINT_DISABLED: "One of your endpoints was disabled after repeated failures.",
}


def register_event_type(name: str, description: str = "") -> str:
    """Make `name` (dotted lower case, e.g. `payment.succeeded`) subscribable."""
    if not NAME.match(name) or len(name) > 100:
        raise ValueError(f"event type {name!r} must be dotted lower case, like 'email.sent'")
    if name == TEST_EVENT:
        raise ValueError(f"{TEST_EVENT} is reserved")
    with _lock:
        _event_types.setdefault(name, description)
    return name


def event_types() -> dict[str, str]:
    """Every subscribable event type with its description, sorted by name."""
    with _lock:
        return dict(sorted(_event_types.items()))


def is_known(name: str) -> bool:
    return name in _event_types
