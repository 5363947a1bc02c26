"""Migration 0007 on SQLite and PostgreSQL: stored card numbers become brand, last four and
the sandbox's payment method id; images may wait for their URL to be fetched."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import create_engine, text

from conveyor.core.migrate import alembic_config
from conveyor.core.settings import Settings
from tests.integration.conftest import fresh_postgres_database

NOW = datetime(2026, 11, 1, tzinfo=UTC)
STORED = {
    "pay_visa": "4242424242424242",
    "pay_declined": "4000 0000 0000 0002",
    "pay_mastercard": "5555-5555-5555-4444",
    "pay_stripe": "pm_1NabcDEF",
}


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'migrate.db'}"
        return
    with fresh_postgres_database("conveyor_mig") as url:
        yield url


def test_card_numbers_are_replaced_and_images_may_wait_for_a_fetch(database_url: str) -> None:
    config = alembic_config(Settings(database_url=database_url))
    command.upgrade(config, "0006")
    engine = create_engine(database_url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with engine.begin() as connection:
            for payment_id, method in STORED.items():
                connection.execute(
                    text(
                        "INSERT INTO conveyor_payments (id, owner, customer_id, amount, currency,"
                        " payment_method, state, amount_captured, amount_refunded,"
                        " amount_refund_pending, attempts, created_at, updated_at)"
                        " VALUES (:id, 'o', 'c', 100, 'USD', :method, 'succeeded', 100, 0, 0,"
                        " 1, :now, :now)"
                    ),
                    {"id": payment_id, "method": method, "now": NOW},
                )
        command.upgrade(config, "0007")
        with engine.begin() as connection:
            rows = connection.execute(
                text("SELECT id, payment_method, card_brand, card_last4 FROM conveyor_payments")
            ).all()
            got = {row[0]: tuple(row[1:]) for row in rows}
            assert got == {
                "pay_visa": ("pm_card_visa", "visa", "4242"),
                "pay_declined": ("pm_card_visa_chargeDeclined", "visa", "0002"),
                "pay_mastercard": ("pm_card_mastercard", "mastercard", "4444"),
                "pay_stripe": ("pm_1NabcDEF", None, None),
            }
            # An image recorded before its URL is fetched has no source yet.
            connection.execute(
                text(
                    "INSERT INTO conveyor_images (id, owner, preset, status, source_url,"
                    " created_at, updated_at) VALUES ('img1', 'o', 'default', 'fetching',"
                    " 'https://example.com/a.jpg', :now, :now)"
                ),
                {"now": NOW},
            )
        command.downgrade(config, "0006")
        with engine.begin() as connection:
            methods = connection.execute(
                text("SELECT payment_method FROM conveyor_payments")
            ).scalars()
            assert "4242424242424242" not in set(methods)  # gone for good
            assert connection.execute(text("SELECT count(*) FROM conveyor_images")).scalar() == 0
    finally:
        engine.dispose()
