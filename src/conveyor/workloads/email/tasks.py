"""Celery tasks of the email workload (queue `email`): thin adapters over `sending`."""

from __future__ import annotations

import logging
import time
from typing import Any

from celery import shared_task, signals

from conveyor.core import dead_letters
from conveyor.core.celery_app import get_celery
from conveyor.core.db import session_scope
from conveyor.core.errors import JobCancelled
from conveyor.core.settings import get_settings, section
from conveyor.core.storage import get_storage
from conveyor.core.task import ConveyorTask
from conveyor.workloads.email import smtp
from conveyor.workloads.email.limits import EmailLimits, Pacer
from conveyor.workloads.email.models import Email
from conveyor.workloads.email.sending import Deferred, Sender, mark_failed
from conveyor.workloads.email.service import DISPATCH_TASK, QUEUE, SEND_TASK, dispatch_due
from conveyor.workloads.email.settings import EmailSettings
from conveyor.workloads.email.signals import email_sent

log = logging.getLogger(__name__)
# Share of the soft time limit a run spends sending; a chunk that needs longer (slow
# rate limits) stops there and retries, continuing with the emails not yet sent.
TIME_BUDGET = 0.75


class EmailTask(ConveyorTask):
    def on_failure(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        super().on_failure(exc, task_id, args, kwargs, einfo)
        if isinstance(exc, JobCancelled):
            return
        email_ids = (kwargs or {}).get("email_ids") or []
        if email_ids:
            mark_failed(list(email_ids), f"{type(exc).__name__}: {exc}")


def _announce(email: Email) -> None:
    email_sent.send(
        sender=SEND_TASK,
        email_id=email.id,
        message_id=email.message_id,
        owner=email.owner,
        to=[item["email"] for item in email.to],
        batch_id=email.batch_id,
    )


@shared_task(bind=True, base=EmailTask, name=SEND_TASK)
def send(self: EmailTask, email_ids: list[str], bulk: bool = False) -> dict[str, int]:
    """Send stored emails. `bulk`: a batch chunk, where a bounce is a dead letter of its
    own and the other emails go on; otherwise a bounce dead-letters this job."""
    settings = get_settings()
    soft = self.request.timelimit[1] if self.request.timelimit else None
    budget = TIME_BUDGET * float(soft or self.soft_time_limit or settings.task_soft_time_limit)

    def bounced(email: Email, exc: smtp.PermanentSmtpError) -> None:
        with session_scope() as session:
            dead_letters.record(
                session,
                dead_letters.Failure(
                    job_id=self.request.id or "",
                    task_name=SEND_TASK,
                    queue=QUEUE,
                    owner=email.owner,
                    args=[],
                    kwargs={"email_ids": [email.id]},
                    exc=exc,
                    traceback=None,
                    reason="permanent_error",
                    attempts=email.attempts + 1,
                ),
            )

    def progress(done: int, total: int) -> None:
        self.report_progress(done, total, f"{done} of {total} emails handled")

    sender = Sender(
        connection=smtp.process_connection(),
        pacer=Pacer(EmailLimits.from_settings()),
        storage=get_storage(settings),
        on_sent=_announce,
        on_bounce=bounced if bulk else None,
        progress=progress if bulk else None,
        resend_final=not bulk,
        defer=not self.request.is_eager,
    )
    try:
        return sender.run(list(email_ids), deadline=time.monotonic() + budget).as_dict()
    except Deferred as wait:
        # Same job, no attempt spent: the process goes on to other work meanwhile.
        kwargs = {"email_ids": wait.email_ids, "bulk": bulk}
        self.continue_later(kwargs, wait.delay, "waiting for recipient domain limits")


@shared_task(bind=True, base=ConveyorTask, name=DISPATCH_TASK, track=False, retry_max=0)
def dispatch_scheduled(self: ConveyorTask) -> int:
    """Beat: publish scheduled emails that are due (or due before the next tick)."""
    interval = section(EmailSettings).email_dispatch_interval_seconds
    try:
        return dispatch_due(get_celery(), horizon=interval * 1.5)
    except Exception:
        # The next tick does the same work; a dead letter per failed tick would be noise.
        log.exception("email.dispatch_failed")
        return 0


def _forget_connection(**_: Any) -> None:
    smtp.forget_connection()


def _close_connection(**_: Any) -> None:
    smtp.close_connection()


# A forked pool process must open its own connection; one exiting says QUIT.
signals.worker_process_init.connect(_forget_connection, weak=False)
signals.worker_process_shutdown.connect(_close_connection, weak=False)
