"""index for the oldest queued job of each queue (queue overview, dashboard)

Revision ID: 0015
Revises: 0014
Create Date: 2026-11-28 01:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

QUEUED = sa.text("state = 'queued'")
STATISTICS = "conveyor_jobs_queue_state"


def upgrade() -> None:
    # Partial, so small: by (state, created_at) alone, a queue with nothing queued would walk
    # every queued job of the other queues, and the planner picks that index over a
    # (queue, state, created_at) one, wrongly thinking queue and state independent.
    op.create_index(
        "ix_conveyor_jobs_queued",
        "conveyor_jobs",
        ["queue", "created_at"],
        sqlite_where=QUEUED,
        postgresql_where=QUEUED,
    )
    if op.get_bind().dialect.name == "postgresql":
        # Without it PostgreSQL takes queue and state as independent, expects every queue to
        # have queued jobs, and walks ix_conveyor_jobs_state_created instead.
        op.execute(
            f"CREATE STATISTICS IF NOT EXISTS {STATISTICS} (mcv) ON queue, state FROM conveyor_jobs"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"DROP STATISTICS IF EXISTS {STATISTICS}")
    op.drop_index("ix_conveyor_jobs_queued", "conveyor_jobs")
