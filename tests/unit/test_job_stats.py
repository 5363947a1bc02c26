"""Per-minute job figures: counted per process, added up in one row, read without a scan."""

from __future__ import annotations

import logging
import os
import time
import warnings
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, insert, select
from sqlalchemy.orm import Session

from conveyor.core import job_stats, task_metrics
from conveyor.core.cleanup import Retention, prune_job_stats, run_cleanup
from conveyor.core.job_figures import latency, latency_series, quantile, series
from conveyor.core.job_stats import StatsRecorder
from conveyor.core.operations_models import DURATION_BOUNDS, JOB_STATS
from conveyor.core.schedules import models as schedule_models

# run_cleanup prunes schedule runs too: their table must exist when the fixture creates all.
assert schedule_models.ScheduleRun is not None

T0 = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)


class Clock:
    def __init__(self, at: datetime) -> None:
        self.now = at.timestamp()

    def __call__(self) -> float:
        return self.now


def recorder_at(clock: Clock) -> StatsRecorder:
    return StatsRecorder(clock=clock, autostart=False)


def rows(session: Session) -> dict[tuple[datetime, str], dict[str, Any]]:
    found = {}
    for row in session.execute(select(JOB_STATS)).mappings():
        minute = row["minute"].replace(tzinfo=UTC)
        found[(minute, row["queue"])] = dict(row)
    return found


def test_observations_are_bucketed_by_the_minute_they_happen_in() -> None:
    clock = Clock(T0 + timedelta(seconds=59.9))
    recorder = recorder_at(clock)
    recorder.observe_wait("default", 0.2)
    recorder.observe_outcome("default", "succeeded", 0.03)
    clock.now += 0.2  # 10:01:00.1
    recorder.observe_outcome("default", "succeeded", 0.03)
    recorder.observe_outcome("email", "cancelled", None)

    pending = recorder.pending()
    first, second = T0, T0 + timedelta(minutes=1)
    assert set(pending) == {(first, "default"), (second, "default"), (second, "email")}
    assert pending[(first, "default")].values["succeeded"] == 1
    assert pending[(first, "default")].values["wait_3"] == 1  # 0.1 < 0.2 <= 0.25
    assert pending[(first, "default")].values["run_1"] == 1  # 0.01 < 0.03 <= 0.05
    assert pending[(second, "email")].values["cancelled"] == 1
    assert pending[(second, "email")].values["run_sum"] == 0


def test_retried_and_dead_attempts_are_failed_too_and_unknown_outcomes_are_not_counted() -> None:
    recorder = recorder_at(Clock(T0))
    recorder.observe_outcome("q", "retried", 1.0)
    recorder.observe_outcome("q", "dead", 2.0)
    recorder.observe_outcome("q", "requeued", 3.0)
    values = recorder.pending()[(T0, "q")].values
    assert (values["failed"], values["retried"], values["dead"], values["succeeded"]) == (
        2,
        1,
        1,
        0,
    )
    assert sum(values[name] for name in job_stats.RUN_COLUMNS) == 2
    assert values["run_sum"] == pytest.approx(3.0)


def test_two_processes_flushing_into_the_same_row_add_up(engine: Engine, session: Session) -> None:
    clock = Clock(T0 + timedelta(seconds=10))
    one, two = recorder_at(clock), recorder_at(clock)
    for recorder, runs in ((one, 3), (two, 2)):
        for _ in range(runs):
            recorder.observe_wait("default", 0.5)
            recorder.observe_outcome("default", "succeeded", 1.5)
    one.observe_outcome("default", "dead", 0.1)
    assert one.flush(engine) == 1
    assert two.flush(engine) == 1
    assert one.flush(engine) == 0  # nothing pending: no write at all

    row = rows(session)[(T0, "default")]
    assert (row["succeeded"], row["failed"], row["dead"]) == (5, 1, 1)
    assert row["wait_4"] == 5
    assert row["run_sum"] == pytest.approx(5 * 1.5 + 0.1)


def test_percentiles_from_known_observations_are_within_a_bucket(
    engine: Engine, session: Session
) -> None:
    recorder = recorder_at(Clock(T0))
    waits = [0.002 * i for i in range(1, 101)]  # 0.002 .. 0.2
    runs = [0.3] * 90 + [7.0] * 10
    for wait, run in zip(waits, runs, strict=True):
        recorder.observe_wait("default", wait)
        recorder.observe_outcome("default", "succeeded", run)
    recorder.flush(engine)

    found = latency(session, since=T0 - timedelta(minutes=1))["default"]
    assert found.count == 100
    assert found.wait_p50 == pytest.approx(0.1, abs=0.05)  # the (0.05, 0.1] bucket
    assert found.wait_p95 == pytest.approx(0.19, abs=0.15)  # the (0.1, 0.25] bucket
    assert 0.25 <= (found.run_p50 or 0) <= 0.5
    assert 5.0 <= (found.run_p95 or 0) <= 10.0
    assert found.wait_mean == pytest.approx(sum(waits) / 100)
    assert found.run_mean == pytest.approx(sum(runs) / 100)
    assert latency(session, since=T0 + timedelta(minutes=1)) == {}


def test_the_unbounded_bucket_answers_its_lower_bound() -> None:
    counts = [0] * len(DURATION_BOUNDS)
    counts[-1] = 4
    assert quantile(counts, 0.5) == DURATION_BOUNDS[-2]
    assert quantile([0] * len(DURATION_BOUNDS), 0.5) is None


def _seed(engine: Engine, minute: datetime, queue: str, **counts: int) -> None:
    with engine.begin() as connection:
        connection.execute(insert(JOB_STATS).values(minute=minute, queue=queue, **counts))


def test_series_fills_empty_minutes_with_zeros(engine: Engine, session: Session) -> None:
    now = T0 + timedelta(hours=1, seconds=20)
    _seed(engine, T0 + timedelta(minutes=5), "default", succeeded=3, failed=1, retried=1)
    _seed(engine, T0 + timedelta(minutes=5), "email", succeeded=2)
    _seed(engine, T0 - timedelta(minutes=5), "default", succeeded=100)  # before the hour

    points = series(session, since=now - timedelta(hours=1), step_minutes=1, until=now)
    assert len(points) == 60
    assert points[0].at == T0 + timedelta(minutes=1)
    assert points[-1].at == T0 + timedelta(minutes=60)
    assert [p.at - q.at for p, q in zip(points[1:], points, strict=False)] == [
        timedelta(minutes=1)
    ] * 59
    busy = next(p for p in points if p.succeeded)
    assert busy.at == T0 + timedelta(minutes=5)
    assert (busy.succeeded, busy.failed, busy.retried, busy.dead) == (5, 1, 1, 0)
    assert sum(p.succeeded for p in points) == 5

    only_email = series(
        session, since=now - timedelta(hours=1), step_minutes=1, until=now, queue="email"
    )
    assert sum(p.succeeded for p in only_email) == 2


def test_series_groups_minutes_into_steps(engine: Engine, session: Session) -> None:
    now = T0 + timedelta(days=1, minutes=3)
    for minute in (0, 7, 14, 15, 29):
        _seed(engine, T0 + timedelta(hours=12, minutes=minute), "default", dead=1)

    points = series(session, since=now - timedelta(days=1), step_minutes=15, until=now)
    assert len(points) == 96
    assert all(point.at.minute % 15 == 0 for point in points)
    by_start = {point.at: point.dead for point in points}
    assert by_start[T0 + timedelta(hours=12)] == 3
    assert by_start[T0 + timedelta(hours=12, minutes=15)] == 2
    assert sum(by_start.values()) == 5


def test_latency_series_gives_each_steps_percentiles_and_gaps_where_nothing_ran(
    engine: Engine, session: Session
) -> None:
    now = T0 + timedelta(minutes=30)
    # Minute 10: every wait in the 0.05-0.1 s bucket; runs in the 1-2.5 s bucket.
    _seed(engine, T0 + timedelta(minutes=10), "default", wait_2=10, run_6=10)
    _seed(engine, T0 + timedelta(minutes=10), "email", wait_2=10, run_6=10)
    _seed(engine, T0 + timedelta(minutes=20), "email", wait_9=4, run_0=4)

    points = latency_series(session, since=T0, step_minutes=1, until=now)
    assert len(points) == 30
    by_minute = {int((point.at - T0).total_seconds() // 60): point for point in points}
    busy = by_minute[10]
    assert busy.wait_p50 is not None
    assert 0.05 < busy.wait_p50 <= 0.1
    assert busy.run_p95 is not None
    assert 1.0 < busy.run_p95 <= 2.5
    assert by_minute[11].wait_p50 is None
    assert by_minute[11].run_p95 is None
    later = latency_series(session, since=T0, step_minutes=15, until=now, queue="email")
    assert [point.at for point in later] == [T0, T0 + timedelta(minutes=15)]
    assert later[1].wait_p95 is not None
    assert 10.0 < later[1].wait_p95 <= 30.0


def test_a_failed_flush_keeps_the_figures_and_warns_once(
    engine: Engine, session: Session, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock(T0)
    recorder = recorder_at(clock)
    recorder.observe_outcome("default", "succeeded", 0.1)
    down = create_engine("sqlite:////nonexistent-directory/ledger.db")
    with caplog.at_level(logging.WARNING, logger="conveyor.core.job_stats"):
        assert recorder.flush(down) == 0
        recorder.observe_outcome("default", "succeeded", 0.1)
        assert recorder.flush(down) == 0
    assert len(caplog.records) == 1
    assert recorder.pending()[(T0, "default")].values["succeeded"] == 2

    assert recorder.flush(engine) == 1
    assert rows(session)[(T0, "default")]["succeeded"] == 2
    assert recorder.pending() == {}


def test_figures_kept_through_a_long_outage_are_bounded() -> None:
    clock = Clock(T0)
    recorder = recorder_at(clock)
    down = create_engine("sqlite:////nonexistent-directory/ledger.db")
    for _ in range(job_stats.MAX_PENDING_MINUTES + 10):
        recorder.observe_outcome("default", "succeeded", None)
        recorder.flush(down)
        clock.now += 60
    minutes = sorted(minute for minute, _ in recorder.pending())
    assert len(minutes) == job_stats.MAX_PENDING_MINUTES
    assert minutes[0] == T0 + timedelta(minutes=10)  # the oldest went first


def test_a_forked_child_starts_empty_without_its_parents_thread() -> None:
    recorder = StatsRecorder(clock=Clock(T0), interval=lambda: 3600)
    recorder.observe_outcome("default", "succeeded", 0.1)
    thread, stop = recorder.thread, recorder._stop
    assert thread is not None
    assert thread.is_alive()
    try:
        recorder.reset_after_fork()
        assert recorder.pending() == {}
        assert recorder.thread is None
    finally:
        stop.set()  # wakes the old thread, which sees it is no longer the recorder's
        thread.join(5)
    assert not thread.is_alive()


def test_the_process_recorder_is_reset_in_a_real_child_process() -> None:
    job_stats.recorder.reset_after_fork()
    job_stats.recorder._autostart = False  # no thread in the test process
    try:
        job_stats.observe_outcome("default", "succeeded", 0.1)
        read, write = os.pipe()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads around
            pid = os.fork()
        if pid == 0:  # the child: report what it inherited, then leave at once
            os.write(write, str(len(job_stats.recorder.pending())).encode())
            os._exit(0)
        os.close(write)
        inherited = os.read(read, 16)
        os.waitpid(pid, 0)
        os.close(read)
        assert inherited == b"0"
        assert len(job_stats.recorder.pending()) == 1  # the parent keeps its own
    finally:
        job_stats.recorder.reset_after_fork()
        job_stats.recorder._autostart = True


def test_cleanup_deletes_figures_past_their_retention(engine: Engine, session: Session) -> None:
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    for days in (9, 10, 30):
        for queue in ("default", "email", "images"):
            _seed(engine, now - timedelta(days=days), queue, succeeded=1)
    _seed(engine, now - timedelta(days=7), "default", succeeded=1)
    _seed(engine, now, "default", succeeded=1)

    assert prune_job_stats(session, 8, batch_size=2) == 9
    assert len(rows(session)) == 2

    _seed(engine, now - timedelta(days=3), "default", succeeded=1)
    retention = Retention(
        jobs_days=14, dead_letters_days=30, webhook_deliveries_days=14, batch_size=100
    )
    assert run_cleanup(session, retention)["job_stats"] == 0  # the setting: 8 days
    short = Retention(
        jobs_days=14,
        dead_letters_days=30,
        webhook_deliveries_days=14,
        batch_size=100,
        job_stats_days=2,
    )
    assert run_cleanup(session, short)["job_stats"] == 2
    assert list(rows(session)) == [(now, "default")]


def _task(**request: Any) -> Any:
    defaults = {"delivery_info": {"routing_key": "email"}, "eta": None, "is_eager": False}
    return SimpleNamespace(name="t", queue=None, request=SimpleNamespace(**{**defaults, **request}))


def test_celery_signals_feed_the_process_recorder(monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = StatsRecorder(autostart=False)
    monkeypatch.setattr(job_stats, "recorder", recorder)
    for state in ("SUCCESS", "RETRY", "FAILURE", "IGNORED"):
        task = _task(conveyor_enqueued_at=time.time() - 2)
        task_metrics.task_started(task_id="j", task=task)
        task_metrics.task_finished(task=task, state=state)
    eager = _task(conveyor_enqueued_at=time.time(), is_eager=True)
    task_metrics.task_started(task_id="e", task=eager)
    task_metrics.task_finished(task=eager, state="SUCCESS")

    totals = dict.fromkeys(job_stats.VALUE_COLUMNS, 0.0)
    for (_, queue), figures in recorder.pending().items():
        assert queue == "email"
        for name, value in figures.values.items():
            totals[name] += value
    counts = [totals[name] for name in ("succeeded", "failed", "retried", "dead", "cancelled")]
    assert counts == [1, 2, 1, 1, 0]
    assert sum(totals[name] for name in job_stats.WAIT_COLUMNS) == 4  # requeued ones waited too
    assert sum(totals[name] for name in job_stats.RUN_COLUMNS) == 3
    assert totals["wait_sum"] == pytest.approx(8, abs=0.5)
