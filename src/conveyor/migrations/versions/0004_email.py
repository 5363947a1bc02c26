"""email workload tables

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25 19:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from conveyor.migrations.names import names

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    n = names()
    op.create_table(
        n("email_batches"),
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("owner", sa.String(length=120), nullable=False),
        sa.Column("job_id", sa.String(length=64), nullable=True),
        sa.Column("template", sa.String(length=64), nullable=True),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("chunks", sa.Integer(), nullable=False),
        sa.Column("send_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table(n("email_batches"), schema=None) as batch_op:
        batch_op.create_index(batch_op.f(n("ix_email_batches_owner")), ["owner"], unique=False)

    op.create_table(
        n("email_suppressions"),
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("owner", sa.String(length=120), nullable=False),
        sa.Column("address", sa.String(length=320), nullable=False),
        sa.Column("reason", sa.String(length=32), nullable=False),
        sa.Column("smtp_code", sa.Integer(), nullable=True),
        sa.Column("smtp_reply", sa.Text(), nullable=True),
        sa.Column("email_id", sa.String(length=32), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("owner", "address", name=n("uq_email_suppressions_owner")),
    )

    op.create_table(
        n("emails"),
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("owner", sa.String(length=120), nullable=False),
        sa.Column("job_id", sa.String(length=64), nullable=True),
        sa.Column("batch_id", sa.String(length=32), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("message_id", sa.String(length=255), nullable=False),
        sa.Column("sender", sa.String(length=500), nullable=False),
        sa.Column("reply_to", sa.String(length=500), nullable=True),
        sa.Column("to", sa.JSON(), nullable=False),
        sa.Column("cc", sa.JSON(), nullable=False),
        sa.Column("bcc", sa.JSON(), nullable=False),
        sa.Column("subject", sa.String(length=998), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("html", sa.Text(), nullable=True),
        sa.Column("template", sa.String(length=64), nullable=True),
        sa.Column("headers", sa.JSON(), nullable=False),
        sa.Column("attachments", sa.JSON(), nullable=False),
        sa.Column("send_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("refused", sa.JSON(), nullable=False),
        sa.Column("skipped", sa.JSON(), nullable=False),
        sa.Column("smtp_code", sa.Integer(), nullable=True),
        sa.Column("smtp_reply", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("message_id"),
    )
    with op.batch_alter_table(n("emails"), schema=None) as batch_op:
        batch_op.create_index(n("ix_emails_batch_status"), ["batch_id", "status"], unique=False)
        batch_op.create_index(batch_op.f(n("ix_emails_job_id")), ["job_id"], unique=False)
        batch_op.create_index(n("ix_emails_owner_created"), ["owner", "created_at"], unique=False)
        batch_op.create_index(n("ix_emails_status_send_at"), ["status", "send_at"], unique=False)

    op.create_table(
        n("stored_files"),
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("owner", sa.String(length=120), nullable=False),
        sa.Column("filename", sa.String(length=255), nullable=False),
        sa.Column("content_type", sa.String(length=255), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("storage_key", sa.String(length=512), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table(n("stored_files"), schema=None) as batch_op:
        batch_op.create_index(batch_op.f(n("ix_stored_files_owner")), ["owner"], unique=False)


def downgrade() -> None:
    n = names()
    with op.batch_alter_table(n("stored_files"), schema=None) as batch_op:
        batch_op.drop_index(batch_op.f(n("ix_stored_files_owner")))
    op.drop_table(n("stored_files"))
    with op.batch_alter_table(n("emails"), schema=None) as batch_op:
        batch_op.drop_index(n("ix_emails_status_send_at"))
        batch_op.drop_index(n("ix_emails_owner_created"))
        batch_op.drop_index(batch_op.f(n("ix_emails_job_id")))
        batch_op.drop_index(n("ix_emails_batch_status"))
    op.drop_table(n("emails"))
    op.drop_table(n("email_suppressions"))
    with op.batch_alter_table(n("email_batches"), schema=None) as batch_op:
        batch_op.drop_index(batch_op.f(n("ix_email_batches_owner")))
    op.drop_table(n("email_batches"))
