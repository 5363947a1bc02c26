"""images workload tables

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-25 19:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from conveyor.migrations.names import names

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    n = names()
    op.create_table(
        n("images"),
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("owner", sa.String(length=120), nullable=False),
        sa.Column("job_id", sa.String(length=64), nullable=True),
        sa.Column("preset", sa.String(length=40), nullable=False),
        sa.Column("status", sa.String(length=24), nullable=False),
        sa.Column("filename", sa.String(length=255), nullable=True),
        sa.Column("source_key", sa.String(length=512), nullable=False),
        sa.Column("source_format", sa.String(length=16), nullable=False),
        sa.Column("source_bytes", sa.Integer(), nullable=False),
        sa.Column("work_key", sa.String(length=512), nullable=True),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("manifest", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(n("ix_images_owner_created"), n("images"), ["owner", "created_at"])
    op.create_table(
        n("image_variants"),
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("image_id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=40), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("outputs", sa.JSON(), nullable=False),
        sa.Column("job_id", sa.String(length=64), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["image_id"], [f"{n('images')}.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("image_id", "name", name=n("uq_image_variants_name")),
    )


def downgrade() -> None:
    n = names()
    op.drop_table(n("image_variants"))
    op.drop_index(n("ix_images_owner_created"), table_name=n("images"))
    op.drop_table(n("images"))
