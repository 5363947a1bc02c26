"""The webhook tasks, on the `webhooks` queue (by their `conveyor.webhooks.` names).

Both are untracked (`track = False`): deliveries keep their own ledger (webhook_deliveries
and webhook_attempts, shown by GET /webhook-endpoints/{id}/deliveries), and a job row per
attempt, or per dispatcher tick, would flood the jobs table. Retries are the delivery
schedule's business; the base task's retries only cover a failure before the attempt
(the database being unreachable), and the dispatcher covers even those in the end.
"""

from __future__ import annotations

import logging

from celery import shared_task

import conveyor.webhooks.listener  # noqa: F401 - registers the job outcome listener
from conveyor.core.task import ConveyorTask
from conveyor.webhooks import delivery
from conveyor.webhooks.service import DELIVER_TASK

DISPATCH_TASK = "conveyor.webhooks.dispatch_due"
log = logging.getLogger(__name__)


class WebhookTask(ConveyorTask):
    track = False
    retry_max = 3


@shared_task(base=WebhookTask, name=DELIVER_TASK)
def deliver(delivery_id: str, expected_attempts: int = 0) -> str:
    """Make the next attempt of one delivery (a no-op for a stale or duplicate message)."""
    return delivery.run_attempt(delivery_id, expected_attempts)


@shared_task(base=WebhookTask, name=DISPATCH_TASK, retry_max=0)
def dispatch_due() -> int:
    """Beat: publish deliveries that are due and have no message on the way."""
    try:
        return delivery.dispatch_due()
    except Exception:
        # The next tick does the same work: a dead letter per failed tick would be noise.
        log.exception("webhooks.dispatch_failed")
        return 0
