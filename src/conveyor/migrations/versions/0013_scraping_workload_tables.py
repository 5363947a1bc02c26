"""scraping workload tables: crawls, their pages and items, proxies, validators

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-27 22:56:35.327830
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "conveyor_crawls",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("owner", sa.String(length=120), nullable=True),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("seeds", sa.JSON(), nullable=False),
        sa.Column("allowed_domains", sa.JSON(), nullable=False),
        sa.Column("include", sa.JSON(), nullable=False),
        sa.Column("exclude", sa.JSON(), nullable=False),
        sa.Column("extract", sa.JSON(), nullable=False),
        sa.Column("max_pages", sa.Integer(), nullable=False),
        sa.Column("max_depth", sa.Integer(), nullable=False),
        sa.Column("rate", sa.String(length=32), nullable=True),
        sa.Column("job_id", sa.String(length=64), nullable=True),
        sa.Column("pages_claimed", sa.Integer(), nullable=False),
        sa.Column("pages_fetched", sa.Integer(), nullable=False),
        sa.Column("pages_failed", sa.Integer(), nullable=False),
        sa.Column("pages_skipped_robots", sa.Integer(), nullable=False),
        sa.Column("pages_skipped", sa.Integer(), nullable=False),
        sa.Column("pages_duplicate", sa.Integer(), nullable=False),
        sa.Column("pages_not_modified", sa.Integer(), nullable=False),
        sa.Column("pages_retried", sa.Integer(), nullable=False),
        sa.Column("pages_redirected", sa.Integer(), nullable=False),
        sa.Column("items", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("conveyor_crawls", schema=None) as batch_op:
        batch_op.create_index(
            "ix_conveyor_crawls_owner_created", ["owner", "created_at"], unique=False
        )

    op.create_table(
        "conveyor_scrape_proxies",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("label", sa.String(length=300), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "conveyor_scrape_validators",
        sa.Column("owner_key", sa.String(length=120), nullable=False),
        sa.Column("url_hash", sa.String(length=32), nullable=False),
        sa.Column("etag", sa.String(length=300), nullable=True),
        sa.Column("last_modified", sa.String(length=64), nullable=True),
        sa.Column("content_hash", sa.String(length=64), nullable=True),
        sa.Column("rules_hash", sa.String(length=32), nullable=False),
        sa.Column("links", sa.JSON(), nullable=False),
        sa.Column("item", sa.JSON(), nullable=True),
        sa.Column("fetched_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("owner_key", "url_hash"),
    )
    op.create_table(
        "conveyor_crawl_items",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("crawl_id", sa.String(length=32), nullable=False),
        sa.Column("page_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["crawl_id"], ["conveyor_crawls.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("conveyor_crawl_items", schema=None) as batch_op:
        batch_op.create_index("ix_conveyor_crawl_items_crawl", ["crawl_id", "id"], unique=False)
        batch_op.create_index("ux_conveyor_crawl_items_page", ["page_id"], unique=True)

    op.create_table(
        "conveyor_crawl_pages",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("crawl_id", sa.String(length=32), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("url_hash", sa.String(length=32), nullable=False),
        sa.Column("domain", sa.String(length=255), nullable=False),
        sa.Column("depth", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("next_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("deferrals", sa.Integer(), nullable=False),
        sa.Column("counted", sa.Boolean(), nullable=False),
        sa.Column("http_status", sa.Integer(), nullable=True),
        sa.Column("final_url", sa.Text(), nullable=True),
        sa.Column("content_type", sa.String(length=120), nullable=True),
        sa.Column("content_hash", sa.String(length=64), nullable=True),
        sa.Column("size", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("fetched_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["crawl_id"], ["conveyor_crawls.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("conveyor_crawl_pages", schema=None) as batch_op:
        batch_op.create_index(
            "ix_conveyor_crawl_pages_due", ["crawl_id", "status", "next_at"], unique=False
        )
        batch_op.create_index(
            "ux_conveyor_crawl_pages_content",
            ["crawl_id", "content_hash"],
            unique=True,
            postgresql_where=sa.text("status IN ('fetched', 'not_modified')"),
            sqlite_where=sa.text("status IN ('fetched', 'not_modified')"),
        )
        batch_op.create_index("ux_conveyor_crawl_pages_url", ["crawl_id", "url_hash"], unique=True)


def downgrade() -> None:
    with op.batch_alter_table("conveyor_crawl_pages", schema=None) as batch_op:
        batch_op.drop_index("ux_conveyor_crawl_pages_url")
        batch_op.drop_index(
            "ux_conveyor_crawl_pages_content",
            postgresql_where=sa.text("status IN ('fetched', 'not_modified')"),
            sqlite_where=sa.text("status IN ('fetched', 'not_modified')"),
        )
        batch_op.drop_index("ix_conveyor_crawl_pages_due")

    op.drop_table("conveyor_crawl_pages")
    with op.batch_alter_table("conveyor_crawl_items", schema=None) as batch_op:
        batch_op.drop_index("ux_conveyor_crawl_items_page")
        batch_op.drop_index("ix_conveyor_crawl_items_crawl")

    op.drop_table("conveyor_crawl_items")
    op.drop_table("conveyor_scrape_validators")
    op.drop_table("conveyor_scrape_proxies")
    with op.batch_alter_table("conveyor_crawls", schema=None) as batch_op:
        batch_op.drop_index("ix_conveyor_crawls_owner_created")

    op.drop_table("conveyor_crawls")
