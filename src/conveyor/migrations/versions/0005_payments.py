"""payments workload tables

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25 19:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from conveyor.migrations.names import names

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

Stamp = sa.DateTime(timezone=True)


def upgrade() -> None:
    n = names()
    op.create_table(
        n("payments"),
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("owner", sa.String(120), nullable=False),
        sa.Column("customer_id", sa.String(120), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("payment_method", sa.String(100), nullable=False),
        sa.Column("description", sa.String(500), nullable=True),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("amount_captured", sa.BigInteger(), nullable=False),
        sa.Column("amount_refunded", sa.BigInteger(), nullable=False),
        sa.Column("amount_refund_pending", sa.BigInteger(), nullable=False),
        sa.Column("gateway_charge_id", sa.String(100), nullable=True),
        sa.Column("failure_code", sa.String(64), nullable=True),
        sa.Column("failure_message", sa.String(500), nullable=True),
        sa.Column("job_id", sa.String(64), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("created_at", Stamp, nullable=False),
        sa.Column("updated_at", Stamp, nullable=False),
        sa.Column("processing_since", Stamp, nullable=True),
        sa.Column("settled_at", Stamp, nullable=True),
        # The database itself refuses a refund total above the capture.
        sa.CheckConstraint(
            "amount_refunded + amount_refund_pending <= amount_captured",
            name=n("ck_payments_refunds_within_capture"),
        ),
        sa.CheckConstraint("amount > 0", name=n("ck_payments_amount_positive")),
    )
    op.create_index(n("ix_payments_owner_created"), n("payments"), ["owner", "created_at", "id"])
    op.create_index(n("ix_payments_owner_customer"), n("payments"), ["owner", "customer_id"])
    op.create_index(n("ix_payments_state_since"), n("payments"), ["state", "processing_since"])

    op.create_table(
        n("payment_refunds"),
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column(
            "payment_id", sa.String(40), sa.ForeignKey(f"{n('payments')}.id"), nullable=False
        ),
        sa.Column("owner", sa.String(120), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("gateway_refund_id", sa.String(100), nullable=True),
        sa.Column("failure_code", sa.String(64), nullable=True),
        sa.Column("failure_message", sa.String(500), nullable=True),
        sa.Column("job_id", sa.String(64), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("created_at", Stamp, nullable=False),
        sa.Column("updated_at", Stamp, nullable=False),
        sa.Column("processing_since", Stamp, nullable=True),
        sa.Column("settled_at", Stamp, nullable=True),
    )
    op.create_index(n("ix_payment_refunds_payment_id"), n("payment_refunds"), ["payment_id"])
    op.create_index(
        n("ix_payment_refunds_state_since"), n("payment_refunds"), ["state", "processing_since"]
    )

    op.create_table(
        n("payment_balance_entries"),
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("entry_key", sa.String(60), nullable=False, unique=True),
        sa.Column(
            "payment_id", sa.String(40), sa.ForeignKey(f"{n('payments')}.id"), nullable=False
        ),
        sa.Column("refund_id", sa.String(40), nullable=True),
        sa.Column("owner", sa.String(120), nullable=False),
        sa.Column("kind", sa.String(10), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("created_at", Stamp, nullable=False),
    )
    op.create_index(
        n("ix_payment_balance_entries_payment_id"), n("payment_balance_entries"), ["payment_id"]
    )

    op.create_table(
        n("payment_gateway_events"),
        sa.Column("id", sa.String(100), primary_key=True),
        sa.Column("type", sa.String(60), nullable=False),
        sa.Column("payment_id", sa.String(40), nullable=True),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("outcome", sa.Text(), nullable=True),
        sa.Column("received_at", Stamp, nullable=False),
    )


def downgrade() -> None:
    n = names()
    op.drop_table(n("payment_gateway_events"))
    op.drop_index(n("ix_payment_balance_entries_payment_id"), n("payment_balance_entries"))
    op.drop_table(n("payment_balance_entries"))
    op.drop_index(n("ix_payment_refunds_state_since"), n("payment_refunds"))
    op.drop_index(n("ix_payment_refunds_payment_id"), n("payment_refunds"))
    op.drop_table(n("payment_refunds"))
    op.drop_index(n("ix_payments_state_since"), n("payments"))
    op.drop_index(n("ix_payments_owner_customer"), n("payments"))
    op.drop_index(n("ix_payments_owner_created"), n("payments"))
    op.drop_table(n("payments"))
