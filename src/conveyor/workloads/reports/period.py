"""A report's period: whole days in a time zone, turned into UTC bounds for the queries."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from conveyor.core.ledger import as_utc

ZERO = timedelta(0)


@dataclass(frozen=True)
class Period:
    start: date
    end: date  # inclusive
    timezone: str = "UTC"

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def days(self) -> int:
        return (self.end - self.start).days + 1

    def bounds(self) -> tuple[datetime, datetime]:
        """[first instant, instant after the last day) in UTC."""
        first = datetime.combine(self.start, time(), self.zone)
        after = datetime.combine(self.end + timedelta(days=1), time(), self.zone)
        return first.astimezone(UTC), after.astimezone(UTC)

    def local(self, moment: datetime | None) -> datetime | None:
        """A stored (UTC) time in the period's zone, without tzinfo, as spreadsheets want it."""
        if moment is None:
            return None
        if self.timezone == "UTC":
            # Stored times are UTC already: the common case, once per cell, kept cheap.
            return (
                moment.replace(tzinfo=None)
                if moment.utcoffset() in (None, ZERO)
                else (moment.astimezone(UTC).replace(tzinfo=None))
            )
        stamp = as_utc(moment)
        assert stamp is not None
        return stamp.astimezone(self.zone).replace(tzinfo=None)

    def day(self, moment: datetime) -> date:
        stamp = as_utc(moment)
        assert stamp is not None
        return stamp.astimezone(self.zone).date()


# Periods a schedule names instead of dates, resolved when each run starts.
RELATIVE = ("yesterday", "last_7_days", "last_week", "last_month", "month_to_date")


def relative(name: str, today: date) -> tuple[date, date]:
    """The (first, last) day of a relative period, counted back from `today`."""
    if name == "yesterday":
        day = today - timedelta(days=1)
        return day, day
    if name == "last_7_days":
        return today - timedelta(days=7), today - timedelta(days=1)
    if name == "last_week":  # Monday to Sunday, the week before this one
        monday = today - timedelta(days=today.weekday() + 7)
        return monday, monday + timedelta(days=6)
    if name == "last_month":
        last = today.replace(day=1) - timedelta(days=1)
        return last.replace(day=1), last
    if name == "month_to_date":
        return today.replace(day=1), today
    raise ValueError(f"period: {name!r} is not one of {', '.join(RELATIVE)}")
