"""The scheduler loop: each tick claims every due slot of every enabled schedule, and the
scheduler whose claim went in submits the slot's job.

Any number of schedulers may run, on any machines: the claim is a row insert that the unique
(schedule_id, slot) constraint lets in once, and the job id is fixed before the job is
submitted, so a claim whose scheduler died before submitting is finished by any other (a
repeated submit of the same id finds the job instead of queueing another). There is no
leader: when one scheduler stops, the others simply claim the next slots.

    python -m conveyor.core.schedules.scheduler      # what `conveyor scheduler` runs
"""

from __future__ import annotations

import logging
import random
import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import FrameType
from typing import Any

from sqlalchemy import Insert, Table, bindparam, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from conveyor.core.db import session_scope
from conveyor.core.ledger import as_utc
from conveyor.core.models import Job, utcnow
from conveyor.core.schedules import overlap, slots
from conveyor.core.schedules.models import Overlap, RunKind, RunState, Schedule, ScheduleRun
from conveyor.core.schedules.service import Submit, catch_up_of, job_id_for, timing_of
from conveyor.core.settings import SettingsError, get_settings

log = logging.getLogger(__name__)

# A claim whose job is still not recorded after this long lost its scheduler: others finish it.
CLAIM_STALE_SECONDS = 10.0
# Overlap looks at this many of the schedule's latest runs (skip and queue_one keep at most
# two active, manual runs aside).
RECENT_RUNS = 5
# Schedules handled per tick at most; the rest stay due for the next tick.
BATCH = 1000
# Slots of one schedule handled per tick at most (on-time slots of a short interval).
SLOTS_PER_TICK = 10
# Slots claimed per statement and commit.
CLAIM_BATCH = 200
# Jobs submitted at once (each a ledger write and a publish); within the default pool size.
SUBMIT_THREADS = 8


def submit_job(job_id: str, task: str, args: list[Any], kwargs: dict[str, Any], owner: str) -> str:
    from conveyor.core.jobs import Submission, submit

    job = submit(Submission(task, list(args), dict(kwargs), owner=owner, job_id=job_id))
    return job.id


@dataclass
class Tick:
    """What one tick did, by outcome (for logs, tests and the bench)."""

    counts: dict[str, int] = field(default_factory=dict)
    # (schedule id, slot, job id) of the jobs this scheduler queued.
    queued: list[tuple[str, datetime, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, outcome: str) -> None:
        with self.lock:
            self.counts[outcome] = self.counts.get(outcome, 0) + 1


@dataclass(frozen=True)
class Firing:
    """A claimed slot's job, in plain values: it may be submitted from another thread."""

    schedule_id: str
    name: str
    task: str
    args: list[Any]
    kwargs: dict[str, Any]
    owner: str
    slot: datetime
    job_id: str

    @classmethod
    def of(cls, schedule: Schedule, slot: datetime, job_id: str) -> Firing:
        return cls(
            schedule.id,
            schedule.name,
            schedule.task,
            list(schedule.args),
            dict(schedule.kwargs),
            schedule.owner,
            slot,
            job_id,
        )


class Submitter:
    """Submits claimed slots' jobs, in a pool of threads when given one (a thousand slots
    due in the same second are then recorded and published in parallel)."""

    def __init__(self, session: Session, submit: Submit, pool: ThreadPoolExecutor | None) -> None:
        self.session, self.submit, self.pool = session, submit, pool
        self.factory = sessionmaker(session.get_bind(), expire_on_commit=False)
        self.pending: list[Future[None]] = []

    def __call__(self, firing: Firing, report: Tick) -> None:
        if self.pool is None:
            _submit(self.session, firing, self.submit, report)
        else:
            self.pending.append(self.pool.submit(self._apart, firing, report))

    def _apart(self, firing: Firing, report: Tick) -> None:
        with self.factory() as session:
            _submit(session, firing, self.submit, report)

    def wait(self) -> None:
        for future in self.pending:
            future.result()
        self.pending.clear()


def tick(
    session: Session,
    now: datetime,
    submit: Submit = submit_job,
    pool: ThreadPoolExecutor | None = None,
) -> Tick:
    """Handle every schedule whose next slot has come, then finish claims left unsubmitted."""
    report = Tick()
    submitter = Submitter(session, submit, pool)
    query = (
        select(Schedule)
        .where(Schedule.enabled.is_(True), Schedule.next_slot <= now)
        .order_by(Schedule.next_slot)
        .limit(BATCH)
    )
    due = list(session.scalars(query))
    # Schedulers that tick together then mostly claim different schedules first.
    random.shuffle(due)
    standing: list[Standing] = []
    for schedule in due:
        try:
            timing = timing_of(schedule)
        except slots.ScheduleError as exc:
            log.warning("schedule %s (%s) cannot fire: %s", schedule.name, schedule.id, exc)
            continue
        next_slot = as_utc(schedule.next_slot)
        assert next_slot is not None
        standing.append(Standing(schedule, timing, next_slot))
    # Several slots of one schedule can be due at once (a slow tick, a short interval): each
    # round handles the next one of every schedule.
    for _ in range(SLOTS_PER_TICK):
        later: list[Standing] = []
        for start in range(0, len(standing), CLAIM_BATCH):
            chunk = standing[start : start + CLAIM_BATCH]
            try:
                later += _claim_batch(session, chunk, now, submitter, report)
            except Exception:
                # One batch's trouble must not hold back the others.
                session.rollback()
                report.add("error")
                log.exception("claiming %d schedules' slots failed this tick", len(chunk))
        standing = later
        if not standing:
            break
    submitter.wait()
    _recover(session, now, submitter, report)
    submitter.wait()
    return report


@dataclass(frozen=True)
class Standing:
    """A due schedule, its timing, and the first slot of it not yet handled."""

    schedule: Schedule
    timing: slots.Timing
    next_slot: datetime


def _claim_batch(
    session: Session, chunk: list[Standing], now: datetime, submit: Submitter, report: Tick
) -> list[Standing]:
    """Claim the next due slot of each schedule in one statement and one commit; submit the
    jobs of the claims that went in. Returns the schedules with their following slot."""
    rows: list[dict[str, Any]] = []
    plans: list[tuple[Standing, slots.Due, str, Firing | None]] = []
    for standing in chunk:
        schedule = standing.schedule
        plan = slots.due(standing.timing, standing.next_slot, now, catch_up_of(schedule))
        if plan is None:
            continue
        state: str
        if not plan.run:
            state = RunState.SKIPPED_MISSED
        elif schedule.overlap != Overlap.ALLOW and not overlap.allows(
            schedule.overlap, _recent_states(session, schedule.id)
        ):
            state = RunState.SKIPPED_OVERLAP
        else:
            state = RunState.CLAIMED
        firing = None
        if state == RunState.CLAIMED:
            firing = Firing.of(schedule, plan.slot, job_id_for(schedule.id, plan.slot))
        rows.append(
            {
                "schedule_id": schedule.id,
                "slot": plan.slot,
                "kind": RunKind.SCHEDULED,
                "state": state,
                "job_id": firing.job_id if firing else None,
                "created_at": now,
                "updated_at": now,
            }
        )
        plans.append((standing, plan, state, firing))
    if not rows:
        return []
    won = _claim(session, rows)
    # Advanced in the claims' transaction; only ever forward, whoever gets there first.
    table = Schedule.__table__
    assert isinstance(table, Table)
    session.connection().execute(
        update(table)
        .where(
            table.c.id == bindparam("b_id"),
            or_(table.c.next_slot.is_(None), table.c.next_slot < bindparam("b_following")),
        )
        .values(next_slot=bindparam("b_following")),
        [{"b_id": s.schedule.id, "b_following": plan.following} for s, plan, _, _ in plans],
    )
    session.commit()
    following: list[Standing] = []
    for standing, plan, outcome, firing in plans:
        following.append(Standing(standing.schedule, standing.timing, plan.following))
        if standing.schedule.id not in won:
            report.add("taken")
        elif firing is None:
            report.add(outcome)
        else:
            submit(firing, report)
    return following


def _claim(session: Session, rows: list[dict[str, Any]]) -> set[str]:
    """Insert the run rows; returns the schedules whose row went in (a slot another scheduler
    claimed first is left to it)."""
    statement: Insert
    if session.get_bind().dialect.name == "postgresql":
        statement = postgresql.insert(ScheduleRun).values(rows).on_conflict_do_nothing()
    else:
        statement = sqlite.insert(ScheduleRun).values(rows).on_conflict_do_nothing()
    # The rows that come back are the ones that went in (rowcount is not reliable here).
    return set(session.scalars(statement.returning(ScheduleRun.schedule_id)))


def _submit(session: Session, firing: Firing, submit: Submit, report: Tick) -> None:
    schedule_id, slot, job_id = firing.schedule_id, firing.slot, firing.job_id
    try:
        actual = submit(job_id, firing.task, firing.args, firing.kwargs, firing.owner)
    except SettingsError as exc:
        # Will not pass by itself (an undeclared queue): record it rather than retry for ever.
        _set_run(session, schedule_id, slot, RunState.FAILED, job_id, str(exc))
        report.add(RunState.FAILED)
        log.error("schedule %s: %s", firing.name, exc)
        return
    except Exception as exc:
        # The claim stays: this scheduler, or another, submits the same job id again.
        session.rollback()
        report.add("retry")
        log.warning("schedule %s: submitting %s failed (%s); will retry", firing.name, job_id, exc)
        return
    _set_run(session, schedule_id, slot, RunState.QUEUED, actual, None)
    report.add(RunState.QUEUED)
    with report.lock:
        report.queued.append((schedule_id, slot, actual))


def _set_run(
    session: Session,
    schedule_id: str,
    slot: datetime,
    state: str,
    job_id: str | None,
    detail: str | None,
) -> None:
    session.execute(
        update(ScheduleRun)
        .where(ScheduleRun.schedule_id == schedule_id, ScheduleRun.slot == slot)
        .values(state=state, job_id=job_id, detail=detail, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    session.commit()


def _recent_states(session: Session, schedule_id: str) -> list[str]:
    rows = session.execute(
        select(ScheduleRun.state, Job.state)
        .outerjoin(Job, Job.id == ScheduleRun.job_id)
        .where(
            ScheduleRun.schedule_id == schedule_id,
            ScheduleRun.state.in_([RunState.CLAIMED, RunState.QUEUED]),
        )
        .order_by(ScheduleRun.slot.desc())
        .limit(RECENT_RUNS)
    ).all()
    # A queued run whose job the ledger no longer has (pruned) is over.
    return [RunState.CLAIMED if run == RunState.CLAIMED else (job or "gone") for run, job in rows]


def _recover(session: Session, now: datetime, submit: Submitter, report: Tick) -> None:
    """Finish claims whose scheduler stopped between claiming and submitting."""
    stale = now - timedelta(seconds=CLAIM_STALE_SECONDS)
    rows = session.execute(
        select(ScheduleRun, Schedule)
        .join(Schedule, Schedule.id == ScheduleRun.schedule_id)
        .where(ScheduleRun.state == RunState.CLAIMED, ScheduleRun.created_at < stale)
        .limit(100)
    ).all()
    for run, schedule in rows:
        slot = as_utc(run.slot)
        assert slot is not None
        assert run.job_id is not None
        if session.get(Job, run.job_id) is not None:
            _set_run(session, schedule.id, slot, RunState.QUEUED, run.job_id, None)
            report.add("recovered")
            continue
        late = (now - slot).total_seconds()
        # A claim is stale only after CLAIM_STALE_SECONDS: that long late still counts as on time.
        window = max(catch_up_of(schedule), slots.ON_TIME_SECONDS + CLAIM_STALE_SECONDS)
        if run.kind == RunKind.SCHEDULED and late > window:
            _set_run(session, schedule.id, slot, RunState.SKIPPED_MISSED, None, "claim abandoned")
            report.add(RunState.SKIPPED_MISSED)
            continue
        submit(Firing.of(schedule, slot, run.job_id), report)


def run_forever(
    stop: threading.Event,
    *,
    tick_seconds: float,
    on_tick: Callable[[Tick], None] | None = None,
) -> None:
    """Tick until `stop` is set, waking just after each whole tick of the clock so a slot on
    the second is claimed within milliseconds of it."""
    pool = ThreadPoolExecutor(SUBMIT_THREADS, thread_name_prefix="schedule-submit")
    while not stop.is_set():
        started = time.monotonic()
        try:
            with session_scope() as session:
                report = tick(session, utcnow(), pool=pool)
            if on_tick is not None:
                on_tick(report)
            took = time.monotonic() - started
            if took > slots.ON_TIME_SECONDS / 2:
                log.warning("slow scheduler tick: %.1fs (%s)", took, report.counts)
        except Exception:
            # A database or broker outage: keep ticking, the claims make retries safe.
            log.exception("scheduler tick failed; trying again")
        stop.wait(tick_seconds - (time.time() % tick_seconds) + 0.005)
    pool.shutdown()


def main() -> None:
    from conveyor.core import migrate
    from conveyor.core.logging import configure_logging
    from conveyor.core.preflight import require_database, require_redis

    settings = get_settings()
    configure_logging()
    require_database(settings)
    require_redis(settings)
    logging.getLogger("alembic").setLevel(logging.WARNING)  # reading the revision is no news
    ledger = migrate.status(settings)
    if not ledger.is_head:
        # Otherwise every tick would fail on a missing table or column.
        at = f"is at {ledger.revision}" if ledger.revision else "has no Conveyor tables yet"
        raise SettingsError(
            f"the ledger {at}, this code needs {ledger.head}: run `conveyor db upgrade`"
        )
    stop = threading.Event()

    def finish(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, finish)
    signal.signal(signal.SIGINT, finish)
    log.info("scheduler started (tick %.3gs)", settings.scheduler_tick_seconds)
    run_forever(stop, tick_seconds=settings.scheduler_tick_seconds)
    log.info("scheduler stopped")


if __name__ == "__main__":
    try:
        main()
    except SettingsError as exc:
        # One line, as the CLI prints it.
        print(f"conveyor scheduler: {exc}", file=sys.stderr)
        sys.exit(2)
