"""Job outcomes as webhook events: job.succeeded, job.failed, job.dead, job.cancelled.

Importing this module registers the listener; the worker imports it through
conveyor.webhooks.tasks, and the API through its webhooks router.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, exists
from sqlalchemy.orm import Session

from conveyor.core.models import WebhookEndpoint
from conveyor.core.outcome_listeners import on_job_outcome
from conveyor.webhooks import service

OUTCOME_EVENTS = {
    "succeeded": "job.succeeded",
    "failed": "job.failed",
    "dead": "job.dead",
    "cancelled": "job.cancelled",
}


def job_event_data(job: dict[str, Any]) -> dict[str, Any]:
    """What a receiver learns about a job: no arguments (they may hold personal data) and
    no traceback (it describes our internals)."""
    error = job.get("error") or None
    return {
        "id": job.get("id"),
        "name": job.get("name"),
        "queue": job.get("queue"),
        "state": job.get("state"),
        "attempts": job.get("attempts"),
        "result": job.get("result"),
        "error": {"type": error.get("type"), "message": error.get("message")} if error else None,
        "created_at": job.get("created_at"),
        "started_at": job.get("started_at"),
        "finished_at": job.get("finished_at"),
        "parent_id": job.get("parent_id"),
    }


def on_outcome(job: dict[str, Any], session: Session) -> None:
    owner = job.get("owner")
    event_type = OUTCOME_EVENTS.get(str(job.get("state")))
    if not owner or event_type is None:
        return
    # In the outbox's transaction: the deliveries exist exactly when the event is told.
    service.emit_event(session, owner, event_type, job_event_data(job))


def has_endpoints(owner: ColumnElement[Any]) -> ColumnElement[bool]:
    """Owners with an endpoint, enabled or not (a disabled one holds its deliveries): the
    statement that ends a job flags its outcome for them only."""
    return exists().where(WebhookEndpoint.owner == owner)


on_job_outcome(on_outcome, wanted=has_endpoints)
