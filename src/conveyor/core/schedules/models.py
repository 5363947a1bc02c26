"""Schedules as data, and their runs: one row per schedule and slot, the exactly-once claim."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from conveyor.core.models import Base, utcnow


class Overlap(StrEnum):
    # A slot whose previous run is still queued or running is recorded as skipped.
    SKIP = "skip"
    # At most one run waits in the queue behind the active one; further slots are skipped.
    QUEUE_ONE = "queue_one"
    ALLOW = "allow"


class RunState(StrEnum):
    # Claimed, job not yet submitted (a scheduler that dies here is finished by another).
    CLAIMED = "claimed"
    QUEUED = "queued"
    SKIPPED_OVERLAP = "skipped_overlap"
    SKIPPED_MISSED = "skipped_missed"
    # The job could not be submitted (its queue is not declared, say); `detail` says why.
    FAILED = "failed"


class RunKind(StrEnum):
    SCHEDULED = "scheduled"
    MANUAL = "manual"


class Schedule(Base):
    __tablename__ = "conveyor_schedules"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner: Mapped[str] = mapped_column(String(120))
    name: Mapped[str] = mapped_column(String(200))
    task: Mapped[str] = mapped_column(String(200))
    args: Mapped[list[Any]] = mapped_column(default=list)
    kwargs: Mapped[dict[str, Any]] = mapped_column(default=dict)
    cron: Mapped[str | None] = mapped_column(String(200))
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    every_seconds: Mapped[int | None] = mapped_column(Integer)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    overlap: Mapped[str] = mapped_column(String(16), default=Overlap.ALLOW)
    # None: the default window for its kind (see slots.default_catch_up).
    catch_up_seconds: Mapped[int | None] = mapped_column(Integer)
    # The earliest slot not yet handled: the scheduler's index of what is due.
    next_slot: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    __table_args__ = (
        CheckConstraint(
            "(cron IS NULL) <> (every_seconds IS NULL)", name="ck_conveyor_schedules_kind"
        ),
        UniqueConstraint("owner", "name", name="uq_conveyor_schedules_owner_name"),
        Index("ix_conveyor_schedules_due", "enabled", "next_slot"),
    )


class ScheduleRun(Base):
    __tablename__ = "conveyor_schedule_runs"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
    )
    schedule_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("conveyor_schedules.id", ondelete="CASCADE")
    )
    slot: Mapped[datetime] = mapped_column()
    kind: Mapped[str] = mapped_column(String(16), default=RunKind.SCHEDULED)
    state: Mapped[str] = mapped_column(String(24))
    job_id: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    __table_args__ = (
        # The claim: whichever scheduler inserts a slot first runs it; the others cannot.
        UniqueConstraint("schedule_id", "slot", name="uq_conveyor_schedule_runs_slot"),
        Index("ix_conveyor_schedule_runs_state", "state", "created_at"),
    )
