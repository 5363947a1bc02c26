"""schedules as data, and one run row per schedule and slot

The unique (schedule_id, slot) constraint is the claim that lets any number of schedulers
run at once: the one whose INSERT succeeds submits the slot's job.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-27 19:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "conveyor_schedules",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("owner", sa.String(length=120), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("task", sa.String(length=200), nullable=False),
        sa.Column("args", sa.JSON(), nullable=False),
        sa.Column("kwargs", sa.JSON(), nullable=False),
        sa.Column("cron", sa.String(length=200), nullable=True),
        sa.Column("timezone", sa.String(length=64), nullable=False),
        sa.Column("every_seconds", sa.Integer(), nullable=True),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("overlap", sa.String(length=16), nullable=False),
        sa.Column("catch_up_seconds", sa.Integer(), nullable=True),
        sa.Column("next_slot", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "(cron IS NULL) <> (every_seconds IS NULL)", name="ck_conveyor_schedules_kind"
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("owner", "name", name="uq_conveyor_schedules_owner_name"),
    )
    op.create_index("ix_conveyor_schedules_due", "conveyor_schedules", ["enabled", "next_slot"])
    op.create_table(
        "conveyor_schedule_runs",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("schedule_id", sa.String(length=32), nullable=False),
        sa.Column("slot", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("state", sa.String(length=24), nullable=False),
        sa.Column("job_id", sa.String(length=64), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["schedule_id"], ["conveyor_schedules.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("schedule_id", "slot", name="uq_conveyor_schedule_runs_slot"),
    )
    op.create_index(
        "ix_conveyor_schedule_runs_state", "conveyor_schedule_runs", ["state", "created_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_conveyor_schedule_runs_state", table_name="conveyor_schedule_runs")
    op.drop_table("conveyor_schedule_runs")
    op.drop_index("ix_conveyor_schedules_due", table_name="conveyor_schedules")
    op.drop_table("conveyor_schedules")
