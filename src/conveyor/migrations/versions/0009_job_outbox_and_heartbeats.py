"""jobs: the arguments of active jobs, and an outbox flag for their outcome events

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-27 15:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from conveyor.migrations.names import names

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    n = names()
    with op.batch_alter_table(n("jobs")) as batch:
        batch.add_column(sa.Column("payload", sa.JSON(), nullable=True))
        batch.add_column(
            sa.Column("events_pending", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    op.create_index(
        n("ix_jobs_events_pending"),
        n("jobs"),
        ["events_pending"],
        sqlite_where=sa.text("events_pending"),
        postgresql_where=sa.text("events_pending"),
    )


def downgrade() -> None:
    n = names()
    op.drop_index(n("ix_jobs_events_pending"), table_name=n("jobs"))
    with op.batch_alter_table(n("jobs")) as batch:
        batch.drop_column("events_pending")
        batch.drop_column("payload")
