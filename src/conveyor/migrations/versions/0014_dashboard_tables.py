"""the dashboard's tables: failed attempts, job tags, paused queues, per-minute job figures,
and indexes for searching jobs and dead letters

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-28 01:05:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# As in conveyor.core.operations_models; a migration keeps its own copy.
BUCKETS = 14
OUTCOMES = ("succeeded", "failed", "retried", "dead", "cancelled")
TRIGRAM_INDEX = "ix_conveyor_dead_letters_message_trgm"


def _counter(name: str) -> sa.Column[int]:
    return sa.Column(name, sa.BigInteger(), server_default="0", nullable=False)


def upgrade() -> None:
    op.create_table(
        "conveyor_job_attempts",
        sa.Column("job_id", sa.String(length=64), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("error_type", sa.String(length=200), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("error_traceback", sa.Text(), nullable=True),
        sa.Column("worker_host", sa.String(length=200), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("job_id", "attempt"),
    )
    op.create_table(
        "conveyor_job_tags",
        sa.Column("job_id", sa.String(length=64), nullable=False),
        sa.Column("tag", sa.String(length=100), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("job_id", "tag"),
    )
    op.create_index("ix_conveyor_job_tags_tag_created", "conveyor_job_tags", ["tag", "created_at"])
    op.create_table(
        "conveyor_paused_queues",
        sa.Column("queue", sa.String(length=64), nullable=False),
        sa.Column("paused_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("paused_by", sa.String(length=120), nullable=True),
        sa.PrimaryKeyConstraint("queue"),
    )
    op.create_table(
        "conveyor_job_stats",
        sa.Column("minute", sa.DateTime(timezone=True), nullable=False),
        sa.Column("queue", sa.String(length=64), nullable=False),
        *[_counter(name) for name in OUTCOMES],
        sa.Column("wait_sum", sa.Float(), server_default="0", nullable=False),
        sa.Column("run_sum", sa.Float(), server_default="0", nullable=False),
        *[_counter(f"wait_{index}") for index in range(BUCKETS)],
        *[_counter(f"run_{index}") for index in range(BUCKETS)],
        sa.PrimaryKeyConstraint("minute", "queue"),
    )
    op.create_index("ix_conveyor_jobs_name_created", "conveyor_jobs", ["name", "created_at"])
    op.create_index("ix_conveyor_jobs_created", "conveyor_jobs", ["created_at", "id"])
    for name, column in (("task", "task_name"), ("queue", "queue"), ("error", "error_type")):
        op.create_index(
            f"ix_conveyor_dead_letters_{name}_failed",
            "conveyor_dead_letters",
            [column, "failed_at"],
        )
    _message_search_index()


def _message_search_index() -> None:
    """On PostgreSQL with pg_trgm available and allowed: a trigram index, so searching dead
    letters' messages for a word is an index scan, not a read of every letter. Without it the
    search still works, only slower."""
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    available = bind.execute(
        sa.text("SELECT 1 FROM pg_available_extensions WHERE name = 'pg_trgm'")
    ).scalar()
    if not available:
        return
    try:
        with bind.begin_nested():
            bind.execute(sa.text("CREATE EXTENSION IF NOT EXISTS pg_trgm"))
            bind.execute(
                sa.text(
                    f"CREATE INDEX {TRIGRAM_INDEX} ON conveyor_dead_letters "
                    "USING gin (error_message gin_trgm_ops)"
                )
            )
    except sa.exc.DBAPIError:
        pass  # not allowed to create the extension here (or it lives in another schema)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"DROP INDEX IF EXISTS {TRIGRAM_INDEX}")
    op.drop_index("ix_conveyor_jobs_created", "conveyor_jobs")
    for name in ("task", "queue", "error"):
        op.drop_index(f"ix_conveyor_dead_letters_{name}_failed", "conveyor_dead_letters")
    op.drop_index("ix_conveyor_jobs_name_created", "conveyor_jobs")
    op.drop_table("conveyor_job_stats")
    op.drop_table("conveyor_paused_queues")
    op.drop_index("ix_conveyor_job_tags_tag_created", "conveyor_job_tags")
    op.drop_table("conveyor_job_tags")
    op.drop_table("conveyor_job_attempts")
