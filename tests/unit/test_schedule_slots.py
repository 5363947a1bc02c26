"""Schedule timing with a fixed clock: cron and interval slots, DST, and the catch-up rule."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import pairwise

import pytest

from conveyor.core.schedules.slots import (
    DEFAULT_CATCH_UP_SECONDS,
    ON_TIME_SECONDS,
    ScheduleError,
    Timing,
    default_catch_up,
    due,
)


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


def slots(timing: Timing, start: datetime, count: int) -> list[datetime]:
    found, moment = [], start
    for _ in range(count):
        moment = timing.next_after(moment)
        found.append(moment)
    return found


def test_interval_slots_are_aligned_to_the_epoch() -> None:
    timing = Timing(every_seconds=60)
    assert timing.next_after(utc(2026, 1, 1, 0, 0, 30)) == utc(2026, 1, 1, 0, 1)
    assert timing.next_after(utc(2026, 1, 1, 0, 1)) == utc(2026, 1, 1, 0, 2)
    assert timing.latest_at(utc(2026, 1, 1, 0, 1, 59)) == utc(2026, 1, 1, 0, 1)
    assert timing.latest_at(utc(2026, 1, 1, 0, 1)) == utc(2026, 1, 1, 0, 1)


def test_cron_slots_in_a_time_zone() -> None:
    timing = Timing(cron="0 7 * * *", timezone="Europe/Berlin")
    # 07:00 in winter is 06:00 UTC.
    assert timing.next_after(utc(2026, 1, 5, 6, 0)) == utc(2026, 1, 6, 6, 0)
    assert timing.latest_at(utc(2026, 1, 5, 6, 0)) == utc(2026, 1, 5, 6, 0)
    assert timing.latest_at(utc(2026, 1, 5, 5, 59)) == utc(2026, 1, 4, 6, 0)
    weekdays = Timing(cron="30 6 * * 1-5", timezone="UTC")
    friday = utc(2026, 1, 9, 6, 30)
    assert weekdays.next_after(friday) == utc(2026, 1, 12, 6, 30)  # Monday


@pytest.mark.parametrize(
    ("zone", "start", "expected_local"),
    [
        # Spring forward: 02:30 does not exist that night; it runs once, at 03:30 summer time.
        ("Europe/Berlin", utc(2026, 3, 27), ["02:30", "02:30", "03:30", "02:30", "02:30"]),
        ("America/New_York", utc(2026, 3, 6), ["02:30", "02:30", "03:30", "02:30", "02:30"]),
        # Fall back: 02:30 happens twice that night; it runs once, on the first pass.
        ("Europe/Berlin", utc(2026, 10, 23), ["02:30", "02:30", "02:30", "02:30", "02:30"]),
        ("America/New_York", utc(2026, 10, 30), ["02:30", "02:30", "02:30", "02:30", "02:30"]),
    ],
)
def test_a_0230_daily_job_runs_once_a_day_across_dst(
    zone: str, start: datetime, expected_local: list[str]
) -> None:
    timing = Timing(cron="30 2 * * *", timezone=zone)
    found = slots(timing, start, 5)
    local = [slot.astimezone(timing.zone) for slot in found]
    assert [moment.strftime("%H:%M") for moment in local] == expected_local
    # One slot per calendar day, five days in a row.
    days = [moment.date() for moment in local]
    assert days == [days[0] + timedelta(days=i) for i in range(5)]
    assert all(later > earlier for earlier, later in pairwise(found))


def test_fall_back_first_pass_only() -> None:
    timing = Timing(cron="30 2 * * *", timezone="Europe/Berlin")
    # 2026-10-25: 02:30 CEST (00:30 UTC) runs; 02:30 CET (01:30 UTC) does not.
    assert timing.next_after(utc(2026, 10, 24, 12)) == utc(2026, 10, 25, 0, 30)
    assert timing.next_after(utc(2026, 10, 25, 0, 30)) == utc(2026, 10, 26, 1, 30)
    assert timing.latest_at(utc(2026, 10, 25, 1, 45)) == utc(2026, 10, 25, 0, 30)


def test_half_hourly_across_spring_forward_has_no_duplicates() -> None:
    timing = Timing(cron="*/30 * * * *", timezone="Europe/Berlin")
    found = slots(timing, utc(2026, 3, 29, 0, 0), 4)
    # 01:30 CET, then 03:00, 03:30, 04:00 CEST: the skipped hour is not run twice.
    assert found == [utc(2026, 3, 29, 0, 30), utc(2026, 3, 29, 1), utc(2026, 3, 29, 1, 30),
                     utc(2026, 3, 29, 2)]  # fmt: skip


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"cron": "61 * * * *"}, "cron"),
        ({"cron": "0 7 * * * *"}, "cron"),
        ({"cron": "0 0 30 2 *"}, "cron"),
        ({"cron": "0 7 * * *", "timezone": "Mars/Olympus"}, "timezone"),
        ({}, "cron, every_seconds"),
        ({"cron": "0 7 * * *", "every_seconds": 60}, "cron, every_seconds"),
        ({"every_seconds": 0}, "every_seconds"),
    ],
)
def test_bad_timings_name_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ScheduleError) as caught:
        Timing(**kwargs)  # type: ignore[arg-type]
    assert str(caught.value).startswith(f"{field}:")


def test_default_catch_up_windows() -> None:
    assert default_catch_up("0 7 * * *", None) == DEFAULT_CATCH_UP_SECONDS == 300
    assert default_catch_up(None, 60) == 60
    assert default_catch_up(None, 86400) == 300


def test_a_slot_on_time_runs_and_nothing_before_it_is_due() -> None:
    timing = Timing(every_seconds=10)
    slot = utc(2026, 1, 1, 12, 0, 0)
    assert due(timing, slot, slot - timedelta(seconds=1), 0) is None
    plan = due(timing, slot, slot + timedelta(seconds=0.4), 0)
    assert plan is not None
    assert (plan.slot, plan.run, plan.following) == (slot, True, utc(2026, 1, 1, 12, 0, 10))


def test_after_downtime_only_the_latest_missed_slot_runs_within_the_window() -> None:
    timing = Timing(cron="*/5 * * * *")
    next_slot = utc(2026, 1, 1, 12, 0)
    # Down from 12:00 to 12:22:30: 12:00..12:15 are passed over; 12:20 is 150 s late.
    plan = due(timing, next_slot, utc(2026, 1, 1, 12, 22, 30), 300)
    assert plan is not None
    assert (plan.slot, plan.run, plan.following) == (
        utc(2026, 1, 1, 12, 20),
        True,
        utc(2026, 1, 1, 12, 25),
    )
    # With a 60 s window the same slot is recorded as missed, and the schedule moves on.
    plan = due(timing, next_slot, utc(2026, 1, 1, 12, 22, 30), 60)
    assert plan is not None
    assert (plan.slot, plan.run) == (utc(2026, 1, 1, 12, 20), False)


def test_a_tick_a_little_late_is_on_time_whatever_the_window() -> None:
    timing = Timing(every_seconds=3600)
    slot = utc(2026, 1, 1, 12)
    plan = due(timing, slot, slot + timedelta(seconds=ON_TIME_SECONDS), 0)
    assert plan is not None
    assert plan.run
    plan = due(timing, slot, slot + timedelta(seconds=ON_TIME_SECONDS + 1), 0)
    assert plan is not None
    assert not plan.run


def test_on_time_slots_are_handled_one_by_one() -> None:
    timing = Timing(every_seconds=1)
    slot = utc(2026, 1, 1, 12)
    plan = due(timing, slot, slot + timedelta(seconds=3.5), 0)
    assert plan is not None
    assert (plan.slot, plan.run, plan.following) == (slot, True, slot + timedelta(seconds=1))
