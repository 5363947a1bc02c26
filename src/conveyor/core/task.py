"""ConveyorTask: the base task that keeps the ledger true, classifies errors and dead-letters."""

from __future__ import annotations

import logging
import random
import secrets
import time
from typing import Any, ClassVar, NoReturn

from celery import Task, states
from celery.exceptions import Ignore, Reject, Retry, SoftTimeLimitExceeded, TimeLimitExceeded
from redis.exceptions import RedisError
from sqlalchemy import case, literal, update
from sqlalchemy.orm import Session

from conveyor.core import brokers, dead_letters, ledger, locks, outcomes, rate_limit, unique
from conveyor.core.celery_app import queue_for
from conveyor.core.db import autocommit, retry_on_disconnect, session_factory, session_scope
from conveyor.core.errors import ErrorKind, JobCancelled, backoff_delay, classify
from conveyor.core.events import publish_job, someone_watching
from conveyor.core.jobs import HEADER_OWNER, HEADER_RECORDED
from conveyor.core.metrics import rate_limit_delays
from conveyor.core.models import TERMINAL_STATES, Job, JobState, utcnow
from conveyor.core.progress import Progress, ProgressWriter
from conveyor.core.redis_client import cancel_key, get_redis
from conveyor.core.settings import get_settings

log = logging.getLogger(__name__)


def _write_progress(job_id: str, progress: Progress) -> None:
    with autocommit() as connection:
        row = ledger.record_progress(
            connection, job_id, progress.current, progress.total, progress.message
        )
    if row is not None and someone_watching():
        publish_job(ledger.job_to_dict(row))


# Jobs' progress, written behind them (progress.py).
progress_writer = ProgressWriter(_write_progress, lambda: get_settings().progress_interval)

# Redeliveries beyond the retry budget: a message that keeps killing its worker (a
# segfault, an OOM kill) must end as a dead letter instead of looping forever.
EXTRA_DELIVERIES = 3
# Where the per-run session lives: on the request, which Celery makes anew for every run.
SESSION_ATTRIBUTE = "conveyor_session"
# Read by the metrics signal handlers (task_metrics) to count a run as cancelled.
CANCELLED_ATTRIBUTE = "conveyor_cancelled"
# When this delivery last knew it was not cancelled (its start, or a look at the cancel flag).
CANCEL_CHECKED_ATTRIBUTE = "conveyor_cancel_checked"

# Headers of a job re-published to wait for a lock or a rate limit: why it waits (the ledger
# is written only when the reason changes) and the rate-limit slot it booked.
HEADER_WAITING = "conveyor_waiting"
HEADER_RATE_TICKET = "conveyor_rate_ticket"
# A waiting job is held unacknowledged by a worker until its countdown ends; never longer
# than this, whatever the visibility timeout allows.
MAX_WAIT_DELAY = 60.0
MIN_WAIT_DELAY = 0.05
# Waits this short are slept in place: cheaper than re-publishing, and more precise.
SLEEP_IN_PLACE = 0.05
# RabbitMQ delays messages in whole seconds: a shorter wait is slept in place there, and a
# longer one's fraction is slept when the job comes back.
SLEEP_IN_PLACE_AMQP = 1.0
# A booked rate-limit slot is honoured this long after its time (scheduling jitter); a job
# later than that (a busy or restarted worker) asks the limiter again, so late jobs never
# bunch up into a burst above the rate.
TICKET_GRACE = 0.1


class ConveyorTask(Task[..., Any]):
    """Base class for every Conveyor task.

    Class attributes a task may set:
      track             record the job in the ledger (False for internal high-volume tasks)
      retry_max         retries after the first attempt (default: CONVEYOR_RETRY_MAX_ATTEMPTS)
      backoff_base, backoff_max   seconds, for exponential backoff with full jitter
      transient_errors, permanent_errors      override the default classification

    Limits (docs/patterns-limits.md). A key setting is a str.format template over the job's
    arguments ("customer:{customer_id}", "{0}", "{owner}"), a function f(args, kwargs), or a
    method (self, args, kwargs):
      unique_for, unique_key      one queued-or-running job per key (checked by `submit`)
      overlap_key                 jobs with the same key never run at the same time
      overlap_ttl, overlap_wait   lock expiry (renewed while running), seconds between checks
      rate, rate_limit_key        "10/s"-style limit shared by all workers; key defaults to
                                  the task name
    A job waiting for a lock or the rate limit is re-published with a countdown: it holds no
    worker slot, spends no retry attempt, and the ledger shows it queued, "waiting for ...".
    """

    abstract = True
    track: ClassVar[bool] = True
    retry_max: ClassVar[int | None] = None
    backoff_base: ClassVar[float | None] = None
    backoff_max: ClassVar[float | None] = None
    transient_errors: ClassVar[tuple[type[BaseException], ...]] = ()
    permanent_errors: ClassVar[tuple[type[BaseException], ...]] = ()
    unique_for: ClassVar[float | None] = None
    unique_key: ClassVar[locks.KeySpec | None] = None
    overlap_key: ClassVar[locks.KeySpec | None] = None
    # Short expiry, renewed every third of it while the job runs: a killed holder frees the
    # key within overlap_ttl seconds, a live one keeps it up to its time limit.
    overlap_ttl: ClassVar[float] = 30.0
    overlap_wait: ClassVar[float] = 1.0
    rate: ClassVar[str | rate_limit.Rate | None] = None
    rate_limit_key: ClassVar[locks.KeySpec | None] = None

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
        self._check_cancelled(job_id)
        if not self.track:
            return
        # Written behind the job, within CONVEYOR_PROGRESS_INTERVAL (progress.py).
        progress_writer.report(job_id, Progress(current, total, message or None))

    def _check_cancelled(self, job_id: str) -> None:
        """At most once per CONVEYOR_PROGRESS_INTERVAL: a job reporting on every item of a
        long list does not ask Redis every time; a cancel stops it within the interval."""
        now = time.monotonic()
        checked = getattr(self.request, CANCEL_CHECKED_ATTRIBUTE, None)
        if checked is not None and now - checked < get_settings().progress_interval:
            return
        if get_redis().exists(cancel_key(job_id)):
            raise JobCancelled(job_id)
        setattr(self.request, CANCEL_CHECKED_ATTRIBUTE, now)

    def _flush_progress(self) -> None:
        """Before any other write about the job: its progress lands first, never after."""
        job_id = self.request.id
        if not self.track or job_id is None:
            return
        # The run's own session first: its uncommitted writes must not hold the job's row.
        self._close_session()
        try:
            progress_writer.flush(job_id)
        except SoftTimeLimitExceeded:
            raise
        except Exception as exc:  # the write that follows matters more than the progress
            log.warning("job %s: progress not written: %s", job_id, exc)

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
        lock: locks.Lock | None = None
        try:
            # Admission first: a job that must wait never touches its ledger row's attempts.
            lock = self._admit(args, kwargs)
            if self.track and not self._begin(args, kwargs):
                return None
            return self.run(*args, **kwargs)
        except (Retry, Ignore, Reject):
            self._flush_progress()
            raise
        except JobCancelled:
            self._flush_progress()
            self._finish_cancelled()
            return None
        except Exception as exc:
            self._flush_progress()
            kind = self.classify(exc)
            if kind is ErrorKind.TRANSIENT and request.retries < self.max_retry_count():
                try:
                    raise self.retry(
                        exc=exc,
                        countdown=self.retry_delay(request.retries),
                        max_retries=self.max_retry_count(),
                    ) from exc
                except Reject as unpublished:
                    # Celery drops the message when the retry cannot be published (the broker
                    # is away): give it back instead, so the job runs again later.
                    self._note_unpublished_retry(exc)
                    raise Reject(
                        unpublished.args[0] if unpublished.args else exc, requeue=True
                    ) from exc
            raise
        finally:
            if lock is not None:
                _release_lock(lock)
            self._close_session()

    def _begin(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
        """Mark the attempt started; False means this delivery must not run."""
        waited = getattr(self.request, HEADER_WAITING, None)
        snapshot = None if waited else self._start_recorded()
        if snapshot is None:
            snapshot = self._start_any(args, kwargs, waited)
            if snapshot is None:
                log.info("job %s is cancelled or finished; skipping delivery", self.request.id)
                self._release_unique(self.request.id)
                return False
        # A cancel marks the ledger row before it sets the flag: a job that started was not
        # cancelled then, so its first look at the flag can wait for the interval.
        setattr(self.request, CANCEL_CHECKED_ATTRIBUTE, time.monotonic())
        publish_job(snapshot)
        if snapshot["attempts"] <= self.max_retry_count() + 1 + EXTRA_DELIVERIES:
            return True
        exc = RuntimeError(
            f"delivered {snapshot['attempts']} times without finishing; "
            "the task may be crashing its worker"
        )
        self._dead_letter(self.request.id, exc, None, args, kwargs, reason="redelivered")
        return False

    def _start_recorded(self) -> dict[str, Any] | None:
        """The common case, on the fast path: one UPDATE of a job the ledger already has.

        None when the row is missing, cancelled or finished: `_start_any` decides then."""
        request = self.request
        if request.id is None:
            return None
        job_id, host = request.id, request.hostname

        def start() -> dict[str, Any] | None:
            with autocommit() as connection:
                return ledger.start_attempt(connection, job_id, worker_host=host)

        # Connections in use moments ago are not pinged (db.py): a dropped one is retried here.
        row = retry_on_disconnect(start)
        if row is None:
            return None
        if row["parent_id"]:
            with session_scope() as session:
                ledger.refresh_parent(session, row["parent_id"])
        return ledger.job_to_dict(row)

    def _start_any(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], waited: str | None
    ) -> dict[str, Any] | None:
        """Start the job through the ORM: records it first if no one did, and clears the
        'waiting for ...' message of a job that waited for a lock or the rate limit."""
        with session_scope() as session:
            job = ledger.mark_started(
                session, self._new_job(args, kwargs), worker_host=self.request.hostname
            )
            if job is None:
                return None
            if waited and job.progress_message == waited:
                job.progress_message = None  # it waited; now it runs
            if job.parent_id:
                ledger.refresh_parent(session, job.parent_id)
            return ledger.job_to_dict(job)

    def _finish_cancelled(self) -> None:
        job_id = self.request.id
        setattr(self.request, CANCELLED_ATTRIBUTE, True)  # metrics: cancelled, not succeeded
        if not self.track or job_id is None:
            return
        with session_scope() as session:
            ledger.mark_cancelled(session, job_id)
            job = session.get(Job, job_id)
            snapshot = ledger.job_to_dict(job) if job else None
        if snapshot:
            publish_job(snapshot)
        self._release_unique(job_id, always=True)

    # --- admission: the non-overlap lock and the rate limit ---------------------------------

    def hard_time_limit(self) -> float:
        timelimit = self.request.timelimit
        hard = timelimit[0] if timelimit else None
        return float(hard or self.time_limit or get_settings().task_time_limit)

    def max_wait_delay(self) -> float:
        """The longest countdown for a waiting job.

        The worker that receives it holds it unacknowledged until the countdown ends, then
        runs it; both must fit in the visibility timeout, or Redis hands it out twice.
        """
        return max_wait_delay(get_settings().visibility_timeout, self.hard_time_limit())

    def _job_key(self, attribute: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
        spec = locks.raw_setting(self, attribute)
        if spec is None:
            return None
        extra = {"owner": getattr(self.request, HEADER_OWNER, None)}
        return locks.render_key(spec, args, kwargs, task=self, extra=extra, what=attribute)

    def _admit(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> locks.Lock | None:
        while True:
            try:
                return self._try_admit(args, kwargs)
            except _WaitInPlace as wait:
                time.sleep(wait.delay)

    def _try_admit(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> locks.Lock | None:
        """Take the overlap lock, then pass the rate limit; or re-publish the job to wait.

        The lock comes first because giving it back is free, while a rate-limit slot taken
        by a job that then waits for the lock would be wasted.
        """
        overlap = self._job_key("overlap_key", args, kwargs)
        rate = None if self.rate is None else rate_limit.parse_rate(self.rate)
        if overlap is None and rate is None:
            return None
        job_id = self.request.id
        if job_id and get_redis().exists(cancel_key(job_id)):
            return None  # cancelled: _begin skips it; it must not wait for anything first
        lock = None
        if overlap is not None:
            lock = locks.Lock(overlap, self.overlap_ttl, token=f"{job_id}:{secrets.token_hex(8)}")
            if not lock.acquire():
                # Check again when the holder's lock would expire, if that comes sooner.
                delay = min(self.overlap_wait, max(lock.retry_after, MIN_WAIT_DELAY))
                self._wait(
                    args, kwargs, delay * random.uniform(0.8, 1.2), f"waiting for lock {overlap}"
                )
            # Renewal ends with the time limit: a hung holder cannot keep the key for ever.
            lock.start_renewing(max_hold=self.hard_time_limit() + lock.ttl)
        if rate is None:
            return lock
        key = self._job_key("rate_limit_key", args, kwargs) or self.name
        try:
            delay, ticket = self._rate_wait(rate, key)
        except BaseException:
            if lock is not None:
                _release_lock(lock)
            raise
        if delay <= 0:
            return lock
        if ticket is not None and delay <= sleep_in_place_limit():
            time.sleep(delay)  # a booked slot moments away
            return lock
        if lock is not None:
            _release_lock(lock)
        self._wait(args, kwargs, delay, f"waiting for rate limit {key}", ticket=ticket)

    def _rate_wait(self, rate: rate_limit.Rate, key: str) -> tuple[float, dict[str, Any] | None]:
        """Seconds this run must wait for the rate limit (0: go now), and the slot it booked
        (None: nothing booked, ask again after the wait)."""
        now = time.time()
        ticket = getattr(self.request, HEADER_RATE_TICKET, None)
        if isinstance(ticket, dict) and ticket.get("key") == key:
            wait = ticket_wait(float(ticket.get("at", 0)), now, grace=TICKET_GRACE)
            if wait is not None:
                return wait, (ticket if wait > 0 else None)
        horizon = self.max_wait_delay()
        decision = rate_limit.reserve(key, rate, horizon=horizon)
        if decision.allowed:
            return 0.0, None
        if decision.reserved:
            return decision.retry_after, {"key": key, "at": now + decision.retry_after}
        # Slots are booked as far as the horizon: come back once part of it has drained,
        # spread out so the waiters do not all return together.
        return max(decision.retry_after, horizon / 2) * random.uniform(1.0, 1.5), None

    def _wait(
        self,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        delay: float,
        reason: str,
        *,
        ticket: dict[str, Any] | None = None,
        started: bool = False,
    ) -> NoReturn:
        """Re-publish this job to run after `delay` seconds, and end this delivery.

        Same task id, same retry count, same options (chains, chords, time limits): waiting
        is not an attempt. Ignore acknowledges the current message without a failure.
        """
        request = self.request
        delay = min(max(delay, MIN_WAIT_DELAY), self.max_wait_delay())
        whole_seconds = sleep_in_place_limit() >= 1
        if request.is_eager or (whole_seconds and delay < 1 and not started):
            # apply() / task_always_eager: a re-publish would run at once, recursively. On
            # RabbitMQ, a wait before the job starts that is shorter than its delays.
            raise _WaitInPlace(delay)
        if whole_seconds:
            # Early rather than late: a booked slot's remainder is slept when the job is back.
            delay = max(1.0, float(int(delay)))
        headers = dict(request.headers or {})
        headers[HEADER_RECORDED] = "1"
        headers[HEADER_WAITING] = reason
        if ticket is None:
            headers.pop(HEADER_RATE_TICKET, None)
        else:
            headers[HEADER_RATE_TICKET] = ticket
        if started or reason != getattr(request, HEADER_WAITING, None):
            # Before publishing: the new message must not start before this write lands.
            self._note_waiting(reason, refund_attempt=started)
        again = self.signature_from_request(request, args, kwargs, countdown=delay, headers=headers)
        try:
            again.apply_async()
        except Exception as exc:
            # Not published: give the message back rather than lose the job.
            log.warning("could not re-publish waiting job %s: %s", request.id, exc)
            raise Reject(exc, requeue=True) from exc
        log.debug("job %s %s; again in %.2fs", request.id, reason, delay)
        cause = "lock" if reason.startswith("waiting for lock") else "rate_limit"
        rate_limit_delays.labels(self.name, cause).observe(delay)
        raise Ignore()

    def continue_later(self, kwargs: dict[str, Any], delay: float, reason: str) -> NoReturn:
        """From inside a running job: re-publish it with `kwargs` (say, the part of its work
        still to do) to run after `delay` seconds, freeing this worker process meanwhile.

        Like waiting for a lock or the rate limit, this spends no attempt: a job that must
        wait for something outside it (a recipient domain's limit) is not failing.
        """
        self._wait(tuple(self.request.args or ()), kwargs, delay, reason, started=True)

    def _note_waiting(self, reason: str, *, refund_attempt: bool = False) -> None:
        """Show the wait in the ledger: state queued (a redelivered 'started' job goes back),
        the reason as its progress message; `refund_attempt` when this delivery had started
        the job (and counted an attempt) before it had to wait."""
        job_id = self.request.id
        if not self.track or job_id is None:
            return
        self._flush_progress()  # the wait's reason is the newer message
        extra: dict[str, Any] = {}
        if refund_attempt:
            extra["attempts"] = case((Job.attempts > 0, Job.attempts - 1), else_=Job.attempts)
        with session_scope() as session:
            statement = (
                update(Job)
                .where(Job.id == job_id, Job.state.in_(ledger.ACTIVE_STATES))
                .values(
                    state=case(
                        (Job.state == JobState.STARTED, literal(JobState.QUEUED.value)),
                        else_=Job.state,
                    ),
                    progress_message=reason[:500],
                    updated_at=utcnow(),
                    **extra,
                )
                .returning(Job)
                .execution_options(synchronize_session=False, populate_existing=True)
            )
            job = session.scalars(statement).first()
            snapshot = ledger.job_to_dict(job) if job else None
        if snapshot:
            publish_job(snapshot)

    def _release_unique(self, job_id: str | None, *, always: bool = False) -> None:
        """Free the job's unique key; `always` where the request may not say it has one
        (the worker's main process after a hard time limit)."""
        if job_id and (always or getattr(self.request, unique.HEADER, None)):
            unique.release_job(job_id)

    # --- lifecycle hooks ---------------------------------------------------------------

    def on_success(self, retval: Any, task_id: str, args: Any, kwargs: Any) -> None:
        if not self.track:
            return

        # Its progress not written yet is written by the ending itself.
        progress = progress_writer.take(task_id)

        def finish() -> dict[str, Any] | None:
            with autocommit() as connection:
                return ledger.finish_success(connection, task_id, retval, progress)

        # The message is acknowledged after this: a lost write would leave the job started.
        try:
            row = retry_on_disconnect(finish)
        except Exception:
            self._keep_result_for_reconciler(task_id, retval)
            raise
        if row is not None and row["parent_id"] is None:
            if someone_watching():
                publish_job(ledger.job_to_dict(row))
            if row["events_pending"]:
                # Someone listens for this owner's outcomes (outcome_listeners.py).
                outcomes.emit({"id": task_id, "owner": row["owner"]})
        elif row is not None:
            with session_scope() as session:
                self._after_transition(session, session.get(Job, task_id))
        self._release_unique(task_id)

    def _keep_result_for_reconciler(self, task_id: str, retval: Any) -> None:
        """The job ran but the ledger did not take its success: the reconciler settles it from
        a stored result (reconcile.py). Celery stored one already unless the submitter asked
        it not to, as `submit` does since the ledger normally holds it."""
        if not (getattr(self.request, "ignore_result", None) or self.ignore_result):
            return
        try:
            self.backend.store_result(task_id, retval, states.SUCCESS, request=self.request)
        except Exception as exc:
            log.warning("job %s: result not stored for the reconciler: %s", task_id, exc)

    def _note_unpublished_retry(self, exc: BaseException) -> None:
        if not self.track or self.request.id is None:
            return
        try:
            with session_scope() as session:
                ledger.mark_retrying(session, self.request.id, exc, None)
        except Exception as error:  # the reconciler repairs the row if this fails too
            log.warning("job %s: retrying not recorded: %s", self.request.id, error)

    def on_retry(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        if not self.track:
            return
        traceback = _traceback_text(einfo)

        def record() -> None:
            with session_scope() as session:
                job = ledger.mark_retrying(session, task_id, exc, traceback)
                self._after_transition(session, job)

        try:
            retry_on_disconnect(record)
        except Exception as error:
            # The retry is already published: failing here would make the job a dead letter
            # while its next attempt waits. The row stays `started` until that attempt begins.
            log.warning("job %s: retrying not recorded: %s", task_id, error)

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
        retry_on_disconnect(
            lambda: self._record_dead_letter(task_id, exc, traceback, args, kwargs, reason)
        )
        self._release_unique(task_id, always=True)
        log.error("job %s of %s is now a dead letter (%s): %s", task_id, self.name, reason, exc)

    def _record_dead_letter(
        self,
        task_id: str | None,
        exc: BaseException,
        traceback: str | None,
        args: Any,
        kwargs: Any,
        reason: str,
    ) -> None:
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

    def _after_transition(self, session: Session, job: Job | None) -> None:
        """Publish the new state and keep a workflow parent in step with its children."""
        if job is None:
            return
        snapshot = ledger.job_to_dict(job)
        finished_parent: dict[str, Any] | None = None
        parent_snapshot = None
        if job.parent_id:
            if job.state in (JobState.DEAD, JobState.FAILED) and job.workflow_stage is not None:
                ledger.cancel_later_stages(session, job.parent_id, job.workflow_stage)
            before = session.get(Job, job.parent_id)
            was_finished = before is not None and before.state in TERMINAL_STATES
            parent = ledger.refresh_parent(session, job.parent_id)
            parent_snapshot = ledger.job_to_dict(parent) if parent else None
            if parent is not None and parent.state in TERMINAL_STATES and not was_finished:
                finished_parent = {**ledger.job_to_dict(parent), "owner": parent.owner}
        session.commit()
        publish_job(snapshot)
        if parent_snapshot:
            publish_job(parent_snapshot)
        if job.state in TERMINAL_STATES:
            outcomes.emit({**snapshot, "owner": job.owner})
        if finished_parent:
            outcomes.emit(finished_parent)


def sleep_in_place_limit() -> float:
    """The longest wait slept in the worker rather than re-published to the broker."""
    # broker_url, not broker: unset, the broker is the Redis URL, whatever that is.
    on_amqp = brokers.is_amqp(get_settings().broker_url or "")
    return SLEEP_IN_PLACE_AMQP if on_amqp else SLEEP_IN_PLACE


class _WaitInPlace(Exception):
    """An eager run (no worker, no broker) waits by sleeping instead."""

    def __init__(self, delay: float) -> None:
        super().__init__(delay)
        self.delay = delay


def max_wait_delay(visibility_timeout: float, time_limit: float) -> float:
    """Half the time the visibility timeout leaves beyond the task's time limit, at most
    MAX_WAIT_DELAY: the countdown plus the run must end before Redis redelivers."""
    return max(MIN_WAIT_DELAY, min(MAX_WAIT_DELAY, (visibility_timeout - time_limit) / 2))


def ticket_wait(at: float, now: float, *, grace: float) -> float | None:
    """For a booked rate-limit slot at `at`: seconds still to wait (0: go), or None when the
    slot is too far past to honour."""
    if at > now:
        return at - now
    return 0.0 if now - at <= grace else None


def _release_lock(lock: locks.Lock) -> None:
    try:
        lock.release()
    except RedisError as exc:
        log.warning("releasing lock %s failed (it expires by itself): %s", lock.name, exc)


def _traceback_text(einfo: Any) -> str | None:
    if einfo is None:
        return None
    text = getattr(einfo, "traceback", None)
    return str(text) if text else None
