"""Signed webhooks (Standard Webhooks): endpoints, events, deliveries with retries.

For workloads: `register_event_type("email.sent", "...")` once at import, then
`emit_event(session, owner, "email.sent", {...})` where the event happens.
For receivers: `verify(secret, headers, body)`.
"""

from conveyor.webhooks.events import register_event_type
from conveyor.webhooks.service import emit_event
from conveyor.webhooks.signing import WebhookVerificationError, sign, verify

__all__ = ["WebhookVerificationError", "emit_event", "register_event_type", "sign", "verify"]
