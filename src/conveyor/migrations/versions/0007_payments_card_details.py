"""payments: keep card brand, last four and the gateway token, never the number

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-27 15:10:00
"""

from collections.abc import Sequence

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
