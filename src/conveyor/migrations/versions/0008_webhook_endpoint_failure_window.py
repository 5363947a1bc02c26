"""webhooks: disable an endpoint after a window of failure, keep its events

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-27 15:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from conveyor.migrations.names import names

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    n = names()
    # Existing streaks start afresh (NULL): their first failure is not known.
    with op.batch_alter_table(n("webhook_endpoints"), schema=None) as batch_op:
        batch_op.add_column(sa.Column("failing_since", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    n = names()
    # The older code knows no held deliveries: they become what it made of them, skipped.
    webhook_deliveries = sa.table(
        n("webhook_deliveries"), sa.column("status", sa.String), sa.column("next_attempt_at")
    )
    op.execute(
        webhook_deliveries.update()
        .where(webhook_deliveries.c.status == "paused")
        .values(status="skipped", next_attempt_at=None)
    )
    with op.batch_alter_table(n("webhook_endpoints"), schema=None) as batch_op:
        batch_op.drop_column("failing_since")
