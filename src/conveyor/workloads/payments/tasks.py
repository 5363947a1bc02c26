"""Celery tasks of the payments workload (queue `payments`): thin adapters over processing."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from celery import shared_task

from conveyor.core.celery_app import get_celery
from conveyor.core.db import session_factory
from conveyor.core.jobs import HEADER_RECORDED
from conveyor.core.settings import get_settings, section
from conveyor.core.task import ConveyorTask
from conveyor.workloads.payments import events as _events  # noqa: F401 - registers event types
from conveyor.workloads.payments import processing
from conveyor.workloads.payments.factory import get_gateway
from conveyor.workloads.payments.settings import PaymentsSettings

CHARGE_TASK = "conveyor.workloads.payments.charge"
REFUND_TASK = "conveyor.workloads.payments.refund"
RECONCILE_TASK = "conveyor.workloads.payments.reconcile"
GIVE_UP: dict[str, Callable[[processing.Sessions, str, str], bool]] = {
    "payment": processing.give_up_payment,
    "refund": processing.give_up_refund,
}


class MoneyTask(ConveyorTask):
    """Retries as the payments settings say; a job that ends as a dead letter leaves its
    payment or refund in `requires_review`, never silently `processing`."""

    backoff_base = 1.0

    def max_retry_count(self) -> int:
        return section(PaymentsSettings).payments_retry_max

    def retry_delay(self, retries: int) -> float:
        own = section(PaymentsSettings).payments_backoff_max_seconds
        ceiling = min(own, get_settings().retry_backoff_max)
        return min(super().retry_delay(retries), ceiling)

    def review_reason(self, exc: BaseException, reason: str) -> str:
        return f"the job ended as a dead letter ({reason}): {type(exc).__name__}: {exc}"

    # What the job's first argument names: a dead letter sets it to `requires_review`.
    target: ClassVar[str] = ""

    def _dead_letter(
        self,
        task_id: str | None,
        exc: BaseException,
        traceback: str | None,
        args: Any,
        kwargs: Any,
        *,
        reason: str,
    ) -> None:
        super()._dead_letter(task_id, exc, traceback, args, kwargs, reason=reason)
        target = (list(args or ()) or [None])[0] or (kwargs or {}).get("target_id")
        give_up = GIVE_UP.get(self.target)
        if isinstance(target, str) and give_up is not None:
            give_up(session_factory(), target, self.review_reason(exc, reason))


class ChargeTask(MoneyTask):
    target = "payment"


class RefundTask(MoneyTask):
    target = "refund"


@shared_task(bind=True, base=ChargeTask, name=CHARGE_TASK)
def charge_payment(self: ChargeTask, payment_id: str) -> dict[str, Any]:
    return processing.charge(session_factory(), get_gateway(), payment_id)


@shared_task(bind=True, base=RefundTask, name=REFUND_TASK)
def refund_payment(self: RefundTask, refund_id: str) -> dict[str, Any]:
    return processing.refund(session_factory(), get_gateway(), refund_id)


def _publish_again(kind: str, target_id: str, job_id: str | None) -> None:
    """The same job id: the ledger row is the one the API recorded."""
    task = CHARGE_TASK if kind == "charge" else REFUND_TASK
    get_celery().send_task(task, args=[target_id], task_id=job_id, headers={HEADER_RECORDED: "1"})


@shared_task(base=ConveyorTask, name=RECONCILE_TASK, track=False)
def reconcile_payments(
    older_than_seconds: float | None = None, pending_older_than_seconds: float | None = None
) -> dict[str, int]:
    """Beat: settle payments and refunds stuck in processing by asking the gateway, and
    publish again those whose job never started."""
    stuck = section(PaymentsSettings).payments_stuck_after_seconds
    older_than = stuck if older_than_seconds is None else older_than_seconds
    pending = stuck if pending_older_than_seconds is None else pending_older_than_seconds
    sessions = session_factory()
    requeued = processing.requeue_unstarted(sessions, _publish_again, older_than=pending)
    counts = processing.reconcile(sessions, get_gateway(), older_than=older_than)
    return {**counts, "requeued": requeued}
