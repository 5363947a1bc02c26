"""ConveyorTask: the base task that keeps the ledger true, classifies errors and dead-letters."""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from celery import Task
from celery.exceptions import Retry, SoftTimeLimitExceeded, TimeLimitExceeded
from sqlalchemy.orm import Session

from conveyor.core import dead_letters, ledger, outcomes
from conveyor.core.celery_app import queue_for
from conveyor.core.db import session_factory, session_scope
from conveyor.core.errors import ErrorKind, JobCancelled, backoff_delay, classify
from conveyor.core.events import publish_job
from conveyor.core.models import TERMINAL_STATES, Job, JobState
from conveyor.core.redis_client import cancel_key, get_redis
from conveyor.core.settings import get_settings

log = logging.getLogger(__name__)

# Redeliveries beyond the retry budget: a message that keeps killing its worker (a
# segfault, an OOM kill) must end as a dead letter instead of looping forever.
EXTRA_DELIVERIES = 3
# Where the per-run session lives: on the request, which Celery makes anew for every run.
SESSION_ATTRIBUTE = "conveyor_session"


class ConveyorTask(Task[..., Any]):
    """Base class for every Conveyor task.

    Class attributes a task may set:
      track             record the job in the ledger (False for internal high-volume tasks)
      retry_max         retries after the first attempt (default: CONVEYOR_RETRY_MAX_ATTEMPTS)
      backoff_base, backoff_max   seconds, for exponential backoff with full jitter
      transient_errors, permanent_errors      override the default classification
    """

    abstract = True
    track: ClassVar[bool] = True
    retry_max: ClassVar[int | None] = None
    backoff_base: ClassVar[float | None] = None
    backoff_max: ClassVar[float | None] = None
    transient_errors: ClassVar[tuple[type[BaseException], ...]] = ()
    permanent_errors: ClassVar[tuple[type[BaseException], ...]] = ()

    # --- settings-derived limits -------------------------------------------------------

    def max_retry_count(self) -> int:
        if self.retry_max is not None:
            return self.retry_max
        return get_settings().retry_max_attempts

    def retry_delay(self, retries: int) -> float:
        settings = get_settings()
        return backoff_delay(
            retries,
            base=self.backoff_base or settings.retry_backoff_base,
            maximum=self.backoff_max or settings.retry_backoff_max,
        )

    def classify(self, exc: BaseException) -> ErrorKind:
        return classify(exc, transient=self.transient_errors, permanent=self.permanent_errors)

    # --- the per-task database session -------------------------------------------------

    @property
    def db(self) -> Session:
        """A session for this task run; committed by the task, always closed after it."""
        session: Session | None = getattr(self.request, SESSION_ATTRIBUTE, None)
        if session is None:
            session = session_factory()()
            setattr(self.request, SESSION_ATTRIBUTE, session)
        return session

    def _close_session(self) -> None:
        session: Session | None = getattr(self.request, SESSION_ATTRIBUTE, None)
        if session is not None:
            try:
                session.rollback()  # whatever the task did not commit is abandoned
            finally:
                session.close()
                setattr(self.request, SESSION_ATTRIBUTE, None)

    # --- progress and cancellation -------------------------------------------------------

    def report_progress(self, current: int, total: int | None = None, message: str = "") -> None:
        """Record progress; raises JobCancelled if the job was cancelled meanwhile."""
        job_id = self.request.id
        if job_id is None:
            return
        if get_redis().exists(cancel_key(job_id)):
            raise JobCancelled(job_id)
        if not self.track:
            return
        with session_scope() as session:
            ledger.mark_progress(session, job_id, current, total, message)
            job = session.get(Job, job_id)
            snapshot = ledger.job_to_dict(job) if job else None
        if snapshot:
            publish_job(snapshot)

    # --- the run ---------------------------------------------------------------------------

    def _new_job(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> ledger.NewJob:
        delivery = self.request.delivery_info or {}
        assert self.request.id is not None
        return ledger.NewJob(
            id=self.request.id,
            name=self.name,
            queue=delivery.get("routing_key") or queue_for(self.name),
            args=args,
            kwargs=kwargs,
        )

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        request = self.request
        if request.called_directly or request.id is None:
            return self.run(*args, **kwargs)
        try:
            if self.track and not self._begin(args, kwargs):
                return None
            return self.run(*args, **kwargs)
        except Retry:
            raise
        except JobCancelled:
            self._finish_cancelled()
            return None
        except Exception as exc:
            kind = self.classify(exc)
            if kind is ErrorKind.TRANSIENT and request.retries < self.max_retry_count():
                raise self.retry(
                    exc=exc,
                    countdown=self.retry_delay(request.retries),
                    max_retries=self.max_retry_count(),
                ) from exc
            raise
        finally:
            self._close_session()

    def _begin(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
        """Mark the attempt started; False means this delivery must not run."""
        with session_scope() as session:
            job = ledger.mark_started(
                session, self._new_job(args, kwargs), worker_host=self.request.hostname
            )
            if job is None:
                log.info("job %s is cancelled or finished; skipping delivery", self.request.id)
                return False
            snapshot = ledger.job_to_dict(job)
            parent_id = job.parent_id
            too_many = job.attempts > self.max_retry_count() + 1 + EXTRA_DELIVERIES
            if parent_id:
                ledger.refresh_parent(session, parent_id)
        publish_job(snapshot)
        if too_many:
            exc = RuntimeError(
                f"delivered {snapshot['attempts']} times without finishing; "
                "the task may be crashing its worker"
            )
            self._dead_letter(self.request.id, exc, None, args, kwargs, reason="redelivered")
            return False
        return True

    def _finish_cancelled(self) -> None:
        job_id = self.request.id
        if not self.track or job_id is None:
            return
        with session_scope() as session:
            ledger.mark_cancelled(session, job_id)
            job = session.get(Job, job_id)
            snapshot = ledger.job_to_dict(job) if job else None
        if snapshot:
            publish_job(snapshot)

    # --- lifecycle hooks ---------------------------------------------------------------

    def on_success(self, retval: Any, task_id: str, args: Any, kwargs: Any) -> None:
        if not self.track:
            return
        with session_scope() as session:
            self._after_transition(session, ledger.mark_succeeded(session, task_id, retval))

    def on_retry(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        if not self.track:
            return
        with session_scope() as session:
            job = ledger.mark_retrying(session, task_id, exc, _traceback_text(einfo))
            self._after_transition(session, job)

    def on_failure(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        if isinstance(exc, JobCancelled):
            return
        if isinstance(exc, SoftTimeLimitExceeded | TimeLimitExceeded):
            reason = "time_limit"
        elif self.classify(exc) is ErrorKind.TRANSIENT:
            reason = "retries_exhausted"
        else:
            reason = "permanent_error"
        self._dead_letter(
            task_id, exc, _traceback_text(einfo), args or (), kwargs or {}, reason=reason
        )

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
        """Move the job to the dead-letter store, once, whatever path got it here.

        Also called in the worker's main process after a hard time limit, where there is
        no task request: everything needed comes in as arguments.
        """
        tracked = self.track and task_id is not None
        with session_scope() as session:
            if tracked:
                assert task_id is not None
                job = ledger.mark_failed(session, task_id, exc, traceback, state=JobState.DEAD)
                if job is None:
                    return  # already finished or cancelled: a duplicate delivery of the end
            else:
                job = session.get(Job, task_id) if task_id else None
            dead_letters.record(
                session,
                dead_letters.Failure(
                    job_id=task_id or "",
                    task_name=self.name,
                    queue=job.queue if job else queue_for(self.name),
                    owner=job.owner if job else None,
                    args=list(args),
                    kwargs=dict(kwargs),
                    exc=exc,
                    traceback=traceback,
                    reason=reason,
                    attempts=job.attempts if job else (self.request.retries or 0) + 1,
                ),
            )
            if tracked:
                self._after_transition(session, job)
        log.error("job %s of %s is now a dead letter (%s): %s", task_id, self.name, reason, exc)

    def _after_transition(self, session: Session, job: Job | None) -> None:
        """Publish the new state and keep a workflow parent in step with its children."""
        if job is None:
            return
        snapshot = ledger.job_to_dict(job)
        parent_snapshot = None
        if job.parent_id:
            if job.state in (JobState.DEAD, JobState.FAILED) and job.workflow_stage is not None:
                ledger.cancel_later_stages(session, job.parent_id, job.workflow_stage)
            parent = ledger.refresh_parent(session, job.parent_id)
            parent_snapshot = ledger.job_to_dict(parent) if parent else None
        session.commit()
        publish_job(snapshot)
        if parent_snapshot:
            publish_job(parent_snapshot)
        if job.state in TERMINAL_STATES:
            outcomes.emit({**snapshot, "owner": job.owner})


def _traceback_text(einfo: Any) -> str | None:
    if einfo is None:
        return None
    text = getattr(einfo, "traceback", None)
    return str(text) if text else None
