"""The scheduler's tick on a SQLite ledger with a fixed clock: one job per slot however many
schedulers tick, claims finished after a crash, the overlap and catch-up rules in place."""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, func, select, update
from sqlalchemy.orm import Session

from conveyor.core.models import Job
from conveyor.core.schedules import service
from conveyor.core.schedules.models import RunState, Schedule, ScheduleRun
from conveyor.core.schedules.scheduler import CLAIM_STALE_SECONDS, tick

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
TASKS = {"app.report", "conveyor.maintenance.cleanup", "conveyor.workloads.reports.build"}


class Ledger:
    """A stand-in for `jobs.submit`: records the job (idempotent by id) in the ledger."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.published: Counter[str] = Counter()
        self.fail_next = False

    def __call__(
        self, job_id: str, task: str, args: list[Any], kwargs: dict[str, Any], owner: str
    ) -> str:
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("the scheduler died here")
        with Session(self.engine) as session:
            if session.get(Job, job_id) is None:
                session.add(Job(id=job_id, name=task, queue="default", owner=owner))
                session.commit()
                self.published[job_id] += 1
        return job_id

    def set_state(self, job_id: str, state: str) -> None:
        with Session(self.engine) as session:
            session.execute(update(Job).where(Job.id == job_id).values(state=state))
            session.commit()


@pytest.fixture
def ledger(engine: Engine) -> Ledger:
    return Ledger(engine)


def make(session: Session, **fields: Any) -> Schedule:
    values: dict[str, Any] = {"name": "s", "task": "app.report", **fields}
    schedule = service.create(
        session, "alice", service.Fields(**values), registered=TASKS, is_admin=False, now=T0
    )
    session.commit()
    return schedule


def runs(session: Session, schedule: Schedule) -> list[ScheduleRun]:
    session.expire_all()
    query = select(ScheduleRun).where(ScheduleRun.schedule_id == schedule.id)
    return list(session.scalars(query.order_by(ScheduleRun.slot)))


@pytest.mark.parametrize("threads", [0, 4])
def test_two_schedulers_ticking_together_submit_each_slot_once(
    engine: Engine, session: Session, ledger: Ledger, threads: int
) -> None:
    schedule = make(session, every_seconds=1)
    other = Session(engine)
    pool = ThreadPoolExecutor(threads) if threads else None
    moment = T0
    for step in range(30):
        moment = T0 + timedelta(seconds=step + 1, milliseconds=3)
        first, second = (session, other) if step % 2 else (other, session)
        tick(first, moment, ledger, pool)
        tick(second, moment, ledger, pool)
    other.close()
    if pool is not None:
        pool.shutdown()
    found = runs(session, schedule)
    assert [run.slot.replace(tzinfo=UTC) for run in found] == [
        T0 + timedelta(seconds=i) for i in range(1, 31)
    ]
    assert all(run.state == RunState.QUEUED for run in found)
    assert len(ledger.published) == 30
    assert set(ledger.published.values()) == {1}


def test_a_claim_whose_scheduler_died_is_submitted_by_another(
    engine: Engine, session: Session, ledger: Ledger
) -> None:
    schedule = make(session, every_seconds=60)
    slot = T0 + timedelta(seconds=60)
    ledger.fail_next = True
    tick(session, slot, ledger)
    [claimed] = runs(session, schedule)
    assert claimed.state == RunState.CLAIMED
    assert not ledger.published
    # Before the claim is stale nobody touches it; after, any scheduler finishes it.
    with Session(engine) as other:
        tick(other, slot + timedelta(seconds=2), ledger)
    assert runs(session, schedule)[0].state == RunState.CLAIMED
    with Session(engine) as other:
        tick(other, slot + timedelta(seconds=CLAIM_STALE_SECONDS + 1), ledger)
    [run] = runs(session, schedule)
    assert run.state == RunState.QUEUED
    assert run.job_id == service.job_id_for(schedule.id, slot)
    assert ledger.published == {run.job_id: 1}


def test_overlap_skip_records_the_slots_while_the_job_runs(
    session: Session, ledger: Ledger
) -> None:
    schedule = make(session, every_seconds=10, overlap="skip")
    tick(session, T0 + timedelta(seconds=10), ledger)
    [first] = runs(session, schedule)
    ledger.set_state(str(first.job_id), "started")
    tick(session, T0 + timedelta(seconds=20), ledger)
    ledger.set_state(str(first.job_id), "succeeded")
    tick(session, T0 + timedelta(seconds=30), ledger)
    states = [run.state for run in runs(session, schedule)]
    assert states == [RunState.QUEUED, RunState.SKIPPED_OVERLAP, RunState.QUEUED]


def test_overlap_queue_one_keeps_one_waiting(session: Session, ledger: Ledger) -> None:
    schedule = make(session, every_seconds=10, overlap="queue_one")
    tick(session, T0 + timedelta(seconds=10), ledger)
    ledger.set_state(str(runs(session, schedule)[0].job_id), "started")
    for step in (20, 30, 40):
        tick(session, T0 + timedelta(seconds=step), ledger)
    states = [run.state for run in runs(session, schedule)]
    # One running, one waiting behind it, then nothing more until the waiting one starts.
    assert states == [
        RunState.QUEUED,
        RunState.QUEUED,
        RunState.SKIPPED_OVERLAP,
        RunState.SKIPPED_OVERLAP,
    ]


def test_overlap_allow_runs_every_slot(session: Session, ledger: Ledger) -> None:
    schedule = make(session, every_seconds=10, overlap="allow")
    for step in (10, 20, 30):
        tick(session, T0 + timedelta(seconds=step), ledger)
        ledger.set_state(str(runs(session, schedule)[-1].job_id), "started")
    assert [run.state for run in runs(session, schedule)] == [RunState.QUEUED] * 3


def test_after_downtime_the_latest_slot_runs_once_if_within_the_window(
    session: Session, ledger: Ledger
) -> None:
    schedule = make(session, cron="*/5 * * * *")  # default window: 300 s
    # Down from 12:00 to 12:22:30: one run, for 12:20, not five.
    tick(session, T0 + timedelta(minutes=22, seconds=30), ledger)
    [run] = runs(session, schedule)
    assert (run.slot.replace(tzinfo=UTC), run.state) == (T0 + timedelta(minutes=20), "queued")
    session.refresh(schedule)
    assert schedule.next_slot is not None
    assert schedule.next_slot.replace(tzinfo=UTC) == T0 + timedelta(minutes=25)


def test_after_downtime_a_slot_beyond_the_window_is_recorded_as_missed(
    session: Session, ledger: Ledger
) -> None:
    schedule = make(session, cron="0 * * * *", catch_up_seconds=60)
    tick(session, T0 + timedelta(hours=3, minutes=10), ledger)
    [run] = runs(session, schedule)
    assert run.slot.replace(tzinfo=UTC) == T0 + timedelta(hours=3)
    assert (run.state, run.job_id) == (RunState.SKIPPED_MISSED, None)
    assert not ledger.published
    tick(session, T0 + timedelta(hours=4, seconds=1), ledger)
    assert runs(session, schedule)[-1].state == RunState.QUEUED


def test_paused_schedules_do_not_fire_and_resume_without_catching_up(
    session: Session, ledger: Ledger
) -> None:
    schedule = make(session, every_seconds=60)
    service.set_enabled(session, schedule, False)
    session.commit()
    tick(session, T0 + timedelta(minutes=10), ledger)
    assert runs(session, schedule) == []
    service.set_enabled(session, schedule, True, now=T0 + timedelta(minutes=10, seconds=5))
    session.commit()
    tick(session, T0 + timedelta(minutes=10, seconds=30), ledger)
    assert runs(session, schedule) == []
    tick(session, T0 + timedelta(minutes=11), ledger)
    assert len(runs(session, schedule)) == 1


def test_trigger_records_a_manual_run(session: Session, ledger: Ledger) -> None:
    schedule = make(session, cron="0 7 * * *")
    run = service.trigger(session, schedule, ledger, now=T0)
    session.commit()
    assert (run.kind, run.state, run.job_id) == ("manual", "queued", service.job_id_for(
        schedule.id, T0))  # fmt: skip
    assert ledger.published == {run.job_id: 1}


@pytest.mark.parametrize(
    ("task", "is_admin", "message"),
    [
        ("app.nope", True, "task: 'app.nope' is not a registered task"),
        ("conveyor.maintenance.cleanup", False, "only admins may schedule it"),
        ("celery.backend_cleanup", True, "is Celery's own"),
    ],
)
def test_tasks_that_cannot_be_scheduled(
    session: Session, task: str, is_admin: bool, message: str
) -> None:
    with pytest.raises(service.ScheduleError, match=message):
        service.create(
            session,
            "alice",
            service.Fields(name="x", task=task, every_seconds=60),
            registered=TASKS,
            is_admin=is_admin,
        )


def test_who_may_schedule_what(session: Session) -> None:
    fields = {"every_seconds": 60, "name": "a"}
    created = service.create(
        session,
        "alice",
        service.Fields(task="conveyor.workloads.reports.build", **fields),  # type: ignore[arg-type]
        registered=TASKS,
        is_admin=False,
    )
    assert created.task == "conveyor.workloads.reports.build"
    admin_made = service.create(
        session,
        "ops",
        service.Fields(task="conveyor.maintenance.cleanup", **fields),  # type: ignore[arg-type]
        registered=TASKS,
        is_admin=True,
    )
    assert admin_made.owner == "ops"
    with pytest.raises(service.ScheduleNameTaken, match="name: you already have"):
        service.create(
            session,
            "alice",
            service.Fields(task="app.report", **fields),  # type: ignore[arg-type]
            registered=TASKS,
            is_admin=False,
        )
    assert service.get(session, created.id, "bob") is None
    assert service.get(session, created.id, None) is created
    assert [s.name for s in service.list_schedules(session, "alice")] == ["a"]


def test_update_switches_timing_kind_and_restarts_from_now(session: Session) -> None:
    schedule = make(session, cron="0 7 * * *", timezone="Europe/Berlin")
    later = T0 + timedelta(hours=1, seconds=5)
    service.update(
        session, schedule, service.Fields(every_seconds=60), registered=TASKS, is_admin=False,
        now=later,
    )  # fmt: skip
    assert (schedule.cron, schedule.every_seconds) == (None, 60)
    assert schedule.next_slot == T0 + timedelta(hours=1, minutes=1)
    with pytest.raises(service.ScheduleError, match=r"^timezone: unknown time zone"):
        service.update(
            session, schedule, service.Fields(timezone="Nowhere/Land"), registered=TASKS,
            is_admin=False,
        )  # fmt: skip


def test_a_slow_tick_runs_every_on_time_slot(session: Session, ledger: Ledger) -> None:
    schedule = make(session, every_seconds=1)
    tick(session, T0 + timedelta(seconds=1), ledger)
    # The next tick comes 3.5 s late (a busy database): the three slots it finds all run.
    tick(session, T0 + timedelta(seconds=4.5), ledger)
    found = runs(session, schedule)
    assert [run.slot.replace(tzinfo=UTC) for run in found] == [
        T0 + timedelta(seconds=i) for i in range(1, 5)
    ]
    assert {run.state for run in found} == {RunState.QUEUED}


def test_after_downtime_slots_on_time_still_run_and_older_ones_are_missed(
    session: Session, ledger: Ledger
) -> None:
    schedule = make(session, every_seconds=1)  # default window: 1 s
    tick(session, T0 + timedelta(seconds=1), ledger)
    tick(session, T0 + timedelta(seconds=30.5), ledger)
    found = [(run.slot.replace(tzinfo=UTC) - T0, run.state) for run in runs(session, schedule)]
    # 2..24 s passed over, 25 s (5.5 s late) recorded as missed, 26..30 s on time.
    assert found == [
        (timedelta(seconds=1), "queued"),
        (timedelta(seconds=25), "skipped_missed"),
        *[(timedelta(seconds=i), "queued") for i in range(26, 31)],
    ]


def test_many_schedules_due_together_are_claimed_in_batches(
    engine: Engine, session: Session, ledger: Ledger
) -> None:
    for n in range(450):
        make(session, name=f"s{n}", every_seconds=60)
    with ThreadPoolExecutor(4) as pool, Session(engine) as other:
        tick(session, T0 + timedelta(seconds=60), ledger, pool)
        report = tick(other, T0 + timedelta(seconds=60), ledger, pool)
    assert report.counts == {}  # the first scheduler had claimed them all
    assert len(ledger.published) == 450
    assert session.scalar(select(func.count()).select_from(ScheduleRun)) == 450


def test_cleanup_prunes_old_runs(session: Session, ledger: Ledger) -> None:
    from conveyor.core.cleanup import prune_schedule_runs

    schedule = make(session, every_seconds=60)
    minute = datetime.now(UTC).replace(second=0, microsecond=0)
    tick(session, minute - timedelta(days=20), ledger)
    tick(session, minute, ledger)
    found = runs(session, schedule)
    old = [run for run in found if run.created_at.replace(tzinfo=UTC) < minute - timedelta(1)]
    assert 1 <= len(old) < len(found)
    assert prune_schedule_runs(session, 14, 100) == len(old)
    assert len(runs(session, schedule)) == len(found) - len(old)
