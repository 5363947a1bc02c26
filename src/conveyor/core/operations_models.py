"""Tables of operating the system: paused queues and the per-minute job figures."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Column, DateTime, Float, String, Table
from sqlalchemy.orm import Mapped, mapped_column

from conveyor.core.models import Base, utcnow

# Upper bounds (seconds) of the wait and run-time histogram buckets; the last is unbounded.
DURATION_BOUNDS: tuple[float, ...] = (
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, float("inf"),
)  # fmt: skip
OUTCOME_COLUMNS = ("succeeded", "failed", "retried", "dead", "cancelled")


class PausedQueue(Base):
    """A queue no worker takes jobs from until it is resumed; kept so later workers obey."""

    __tablename__ = "conveyor_paused_queues"

    queue: Mapped[str] = mapped_column(String(64), primary_key=True)
    paused_at: Mapped[datetime] = mapped_column(default=utcnow)
    paused_by: Mapped[str | None] = mapped_column(String(120))


def _counter(name: str) -> Column[int]:
    return Column(name, BigInteger, nullable=False, server_default="0")


# One row per queue per minute, added to by every worker process: counts of outcomes and
# histograms of wait and run time, so figures survive restarts and cost no scan of the jobs.
JOB_STATS = Table(
    "conveyor_job_stats",
    Base.metadata,
    Column("minute", DateTime(timezone=True), primary_key=True),
    Column("queue", String(64), primary_key=True),
    *[_counter(name) for name in OUTCOME_COLUMNS],
    Column("wait_sum", Float, nullable=False, server_default="0"),
    Column("run_sum", Float, nullable=False, server_default="0"),
    *[_counter(f"wait_{index}") for index in range(len(DURATION_BOUNDS))],
    *[_counter(f"run_{index}") for index in range(len(DURATION_BOUNDS))],
)
