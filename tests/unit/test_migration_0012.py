"""Revision 0012 makes the reports table the model describes, and takes it away again."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from conveyor.core import migrate
from conveyor.core.settings import Settings
from conveyor.workloads.reports.models import Report


def test_upgrade_matches_the_model_and_downgrade_removes_it(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    settings = Settings(database_url=url, data_dir=tmp_path)
    migrate.upgrade(settings, "0012")
    engine = sa.create_engine(url)
    try:
        inspector = sa.inspect(engine)
        columns = {column["name"]: column for column in inspector.get_columns("conveyor_reports")}
        assert set(columns) == set(Report.__table__.columns.keys())
        for column in Report.__table__.columns:
            assert columns[column.name]["nullable"] == column.nullable, column.name
        assert {index["name"] for index in inspector.get_indexes("conveyor_reports")} == {
            "ix_conveyor_reports_owner_created"
        }
        migrate.downgrade(settings, "0011")
        assert "conveyor_reports" not in sa.inspect(engine).get_table_names()
    finally:
        engine.dispose()
