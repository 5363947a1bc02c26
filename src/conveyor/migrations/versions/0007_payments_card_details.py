"""payments: keep card brand, last four and the gateway token, never the number

Also images: an image given by URL is recorded before a worker fetches it, so its source
columns may be empty, and it keeps the URL.

Payments stored before this revision hold the card number the client sent. Each becomes the
sandbox's payment method id for it, its brand and its last four digits, and the number is
gone: the downgrade cannot bring it back (and must not).

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-27 15:10:00
"""

import re
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from conveyor.migrations.names import names

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of payments/cards.py as of this revision: a migration must do tomorrow what
# it does today, whatever the code becomes.
_NUMBER = re.compile(r"[0-9][0-9 -]*[0-9]")
_TEST_CARD_IDS = {
    "4242424242424242": "pm_card_visa",
    "4000000000000002": "pm_card_visa_chargeDeclined",
    "4000000000009995": "pm_card_visa_chargeDeclinedInsufficientFunds",
    "4000000000000119": "pm_card_sandbox_failsOnce",
    "4000000000006975": "pm_card_sandbox_timesOut",
}
_BRANDS = (
    ("amex", (("34", "34"), ("37", "37"))),
    ("diners", (("300", "305"), ("36", "36"), ("38", "39"))),
    ("discover", (("6011", "6011"), ("644", "649"), ("65", "65"))),
    ("jcb", (("3528", "3589"),)),
    ("mastercard", (("51", "55"), ("2221", "2720"))),
    ("unionpay", (("62", "62"),)),
    ("visa", (("4", "4"),)),
)
_IMAGE_SOURCE = (
    ("source_key", sa.String(length=512)),
    ("source_format", sa.String(length=16)),
    ("source_bytes", sa.Integer()),
    ("width", sa.Integer()),
    ("height", sa.Integer()),
)


def _digits(text: str) -> str | None:
    if not _NUMBER.fullmatch(text):
        return None
    digits = text.replace(" ", "").replace("-", "")
    return digits if 12 <= len(digits) <= 19 else None


def _brand(digits: str) -> str:
    for brand, ranges in _BRANDS:
        if any(low <= digits[: len(low)] <= high for low, high in ranges):
            return brand
    return "unknown"


def _payments(name: str) -> sa.TableClause:
    return sa.table(
        name,
        sa.column("id", sa.String),
        sa.column("payment_method", sa.String),
        sa.column("card_brand", sa.String),
        sa.column("card_last4", sa.String),
    )


def upgrade() -> None:
    n = names()
    with op.batch_alter_table(n("payments")) as batch:
        batch.add_column(sa.Column("card_brand", sa.String(length=20), nullable=True))
        batch.add_column(sa.Column("card_last4", sa.String(length=4), nullable=True))
    connection = op.get_bind()
    payments = _payments(n("payments"))
    # Payment method ids start with a letter; only digits can be a card number.
    candidates = connection.execute(
        sa.select(payments.c.id, payments.c.payment_method).where(
            sa.func.substr(payments.c.payment_method, 1, 1).between("0", "9")
        )
    ).all()
    for payment_id, method in candidates:
        digits = _digits(method)
        if digits is None:
            continue
        brand = _brand(digits)
        connection.execute(
            payments.update()
            .where(payments.c.id == payment_id)
            .values(
                payment_method=_TEST_CARD_IDS.get(digits, f"pm_card_{brand}"),
                card_brand=brand,
                card_last4=digits[-4:],
            )
        )
    with op.batch_alter_table(n("images")) as batch:
        batch.add_column(sa.Column("source_url", sa.String(length=2048), nullable=True))
        for name, type_ in _IMAGE_SOURCE:
            batch.alter_column(name, existing_type=type_, nullable=True)


def downgrade() -> None:
    n = names()
    # Images never fetched cannot satisfy the old NOT NULL columns.
    images = sa.table(n("images"), sa.column("id", sa.String), sa.column("source_key", sa.String))
    variants = sa.table(n("image_variants"), sa.column("image_id", sa.String))
    unfetched = sa.select(images.c.id).where(images.c.source_key.is_(None))
    op.execute(variants.delete().where(variants.c.image_id.in_(unfetched)))
    op.execute(images.delete().where(images.c.source_key.is_(None)))
    with op.batch_alter_table(n("images")) as batch:
        for name, type_ in _IMAGE_SOURCE:
            batch.alter_column(name, existing_type=type_, nullable=False)
        batch.drop_column("source_url")
    with op.batch_alter_table(n("payments")) as batch:
        batch.drop_column("card_last4")
        batch.drop_column("card_brand")
