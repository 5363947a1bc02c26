"""When a schedule fires: cron expressions in a time zone, or fixed intervals, as UTC slots.

Cron slots are wall-clock times in the schedule's zone. Across a DST change each wall-clock
time fires once: a time the clock skips (02:30 on a spring-forward night in Europe/Berlin)
fires at the instant it would have had on the old offset (03:30 summer time), and a time the
clock passes twice (02:30 on a fall-back night) fires on its first pass only.

Interval slots are aligned to the Unix epoch, so every scheduler computes the same ones:
`every_seconds=3600` fires on the hour (UTC), `every_seconds=60` on the minute.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterError, croniter

# A slot this late is on time and runs, whatever its catch-up window: ticks are a second
# apart, and a scheduler held up by a slow database must not skip what it was about to run.
ON_TIME_SECONDS = 5
# The default catch-up window for cron schedules (interval ones: one interval, at most this).
DEFAULT_CATCH_UP_SECONDS = 300
# Around a DST change wall-clock order and UTC order differ for up to this long.
_SHIFT_MARGIN = timedelta(hours=3)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class ScheduleError(ValueError):
    """A schedule a person asked for that cannot be made as asked; the message names the field
    and the fix."""


class TimingError(ScheduleError):
    """A cron expression, time zone or interval that cannot be used."""


def zone_for(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise TimingError(
            f"timezone: unknown time zone {name!r}; use an IANA name such as 'Europe/Berlin' "
            "or 'UTC'"
        ) from None


def default_catch_up(cron: str | None, every_seconds: int | None) -> int:
    if every_seconds is not None:
        return min(every_seconds, DEFAULT_CATCH_UP_SECONDS)
    return DEFAULT_CATCH_UP_SECONDS


@dataclass(frozen=True)
class Timing:
    """A cron expression in a zone, or an interval: exactly one of `cron` and `every_seconds`."""

    cron: str | None = None
    timezone: str = "UTC"
    every_seconds: int | None = None

    def __post_init__(self) -> None:
        if (self.cron is None) == (self.every_seconds is None):
            raise TimingError("cron, every_seconds: give exactly one of them")
        zone_for(self.timezone)
        if self.every_seconds is not None and self.every_seconds < 1:
            raise TimingError("every_seconds: must be 1 or more")
        if self.cron is not None:
            fields = self.cron.split()
            if not self.cron.startswith("@") and len(fields) != 5:
                raise TimingError(
                    f"cron: {self.cron!r} has {len(fields)} fields; give 5 "
                    "(minute hour day-of-month month day-of-week), e.g. '0 7 * * *'"
                )
            if not croniter.is_valid(self.cron):
                raise TimingError(
                    f"cron: {self.cron!r} is not a valid cron expression; e.g. '0 7 * * *'"
                )
            try:
                self.next_after(datetime.now(UTC))
            except CroniterError:
                raise TimingError(f"cron: {self.cron!r} never fires") from None

    @property
    def zone(self) -> ZoneInfo:
        return zone_for(self.timezone)

    def next_after(self, after: datetime) -> datetime:
        """The first slot strictly after `after` (UTC)."""
        if self.every_seconds is not None:
            step = self.every_seconds
            index = math.floor((after - _EPOCH).total_seconds() / step) + 1
            return _EPOCH + timedelta(seconds=index * step)
        assert self.cron is not None
        zone = self.zone
        margin = _margin(zone, after)
        local = _naive(after, zone)
        found: datetime | None = None
        times = croniter(self.cron, local - margin)
        while True:
            naive = times.get_next(datetime)
            slot = _utc(naive, zone)
            if slot > after and (found is None or slot < found):
                found = slot
            if found is not None and naive > local + margin:
                return found

    def latest_at(self, at: datetime) -> datetime:
        """The last slot at or before `at` (UTC)."""
        if self.every_seconds is not None:
            step = self.every_seconds
            index = math.floor((at - _EPOCH).total_seconds() / step)
            return _EPOCH + timedelta(seconds=index * step)
        assert self.cron is not None
        zone = self.zone
        margin = _margin(zone, at)
        local = _naive(at, zone)
        found: datetime | None = None
        times = croniter(self.cron, local.replace(microsecond=0) + margin + timedelta(seconds=1))
        while True:
            naive = times.get_prev(datetime)
            slot = _utc(naive, zone)
            if slot <= at and (found is None or slot > found):
                found = slot
            if found is not None and naive < local - margin:
                return found


@dataclass(frozen=True)
class Due:
    """What a tick does for a schedule whose next slot has come."""

    slot: datetime
    # False: the slot is later than the catch-up window allows; it is recorded as missed.
    run: bool
    # The schedule's next slot once this one is handled.
    following: datetime


def due(timing: Timing, next_slot: datetime, now: datetime, catch_up_seconds: int) -> Due | None:
    """The slot to handle now, if one has come.

    A slot at most ON_TIME_SECONDS late is on time: it runs, each one, however slow the ticks.
    Later than that it was missed (the schedulers were down): of the missed slots only the
    newest is handled, and it runs if it is at most `catch_up_seconds` late, else it is
    recorded as missed. The ones before it are passed over.
    """
    if next_slot > now:
        return None
    if (now - next_slot).total_seconds() <= ON_TIME_SECONDS:
        return Due(next_slot, True, timing.next_after(next_slot))
    newest_missed = timing.latest_at(now - timedelta(seconds=ON_TIME_SECONDS, microseconds=1))
    slot = max(newest_missed, next_slot)
    late = (now - slot).total_seconds()
    return Due(slot, late <= catch_up_seconds, timing.next_after(slot))


def _naive(moment: datetime, zone: ZoneInfo) -> datetime:
    return moment.astimezone(zone).replace(tzinfo=None)


def _utc(naive: datetime, zone: ZoneInfo) -> datetime:
    # fold=0: a skipped time takes the offset before the change, a repeated one its first pass.
    return naive.replace(tzinfo=zone).astimezone(UTC)


def _margin(zone: ZoneInfo, moment: datetime) -> timedelta:
    before = (moment - _SHIFT_MARGIN).astimezone(zone).utcoffset()
    after = (moment + _SHIFT_MARGIN).astimezone(zone).utcoffset()
    return _SHIFT_MARGIN if before != after else timedelta(0)
