"""The reports workload's row builders and formats, over a SQLite ledger with raw rows."""

from __future__ import annotations

import csv
import io
from datetime import date
from pathlib import Path
from typing import Any

import openpyxl
import pypdf
import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from conveyor.core.settings import Settings
from conveyor.core.storage import LocalStorage
from conveyor.workloads.reports import service
from conveyor.workloads.reports.models import Report
from conveyor.workloads.reports.period import Period
from conveyor.workloads.reports.settings import ReportsSettings
from conveyor.workloads.reports.table import percentile
from tests.integration.reports_data import END, START, Expected, insert


def build(
    engine: Engine, tmp_path: Path, kind: str, fmt: str, owner: str | None, chunk: int = 100
) -> tuple[Report, bytes]:
    report = Report(
        id=f"r{kind}{fmt}{owner}", owner=owner, kind=kind, start=START, end=END,
        timezone="UTC", format=fmt, email_to=[],
    )  # fmt: skip
    storage = LocalStorage(tmp_path / "files")
    seen: list[int] = []
    built = service.build(
        engine, storage, report, ReportsSettings(report_chunk_rows=chunk), seen.append
    )
    assert seen == sorted(seen)
    assert (seen[-1] if seen else 0) == built.rows
    data = storage.get(built.key)
    assert built.size == len(data)
    report.rows = built.rows
    return report, data


def summary(data: bytes) -> list[tuple[Any, ...]]:
    book = openpyxl.load_workbook(io.BytesIO(data), read_only=True)
    rows = list(book["Summary"].iter_rows(min_row=4, values_only=True))
    return [tuple(row) for row in rows if row and row[0] is not None]


@pytest.fixture
def data(session: Session) -> dict[str, Expected]:
    return {"alice": insert(session, "alice", 1), "bob": insert(session, "bob", 2, count=20)}


def test_jobs_summary_matches_the_rows(engine: Engine, tmp_path: Path, data: Any) -> None:
    _, xlsx = build(engine, tmp_path, "jobs", "xlsx", "alice", chunk=7)
    got = {tuple(row[:3]): row[3:] for row in summary(xlsx)}
    assert set(got) == set(data["alice"].jobs)
    for key, (count, *times) in data["alice"].jobs.items():
        assert got[key][0] == count
        assert list(got[key][1:]) == pytest.approx(times, abs=1e-6)


def test_each_kind_is_scoped_to_its_owner_and_admin_sees_all(
    engine: Engine, tmp_path: Path, data: Any
) -> None:
    _, alice = build(engine, tmp_path, "emails", "xlsx", "alice")
    assert {row[0]: tuple(row[1:]) for row in summary(alice)} == data["alice"].emails
    _, everyone = build(engine, tmp_path, "emails", "xlsx", None)
    assert {row[0] for row in summary(everyone)} == set(data["alice"].emails) | set(
        data["bob"].emails
    )


def test_payments_per_currency_and_day_reconcile(engine: Engine, tmp_path: Path, data: Any) -> None:
    _, xlsx = build(engine, tmp_path, "payments", "xlsx", "bob")
    got = {(row[0], row[1].date().isoformat()): tuple(row[2:]) for row in summary(xlsx)}
    assert got == data["bob"].payments
    assert all(row[-1] == "yes" for row in got.values())


def test_images_bytes_in_out_and_saved(engine: Engine, tmp_path: Path, data: Any) -> None:
    _, xlsx = build(engine, tmp_path, "images", "xlsx", "alice", chunk=3)
    got = {row[0]: tuple(row[1:6]) for row in summary(xlsx)}
    assert got == data["alice"].images


def test_csv_has_a_line_per_detail_row(engine: Engine, tmp_path: Path, data: Any) -> None:
    report, body = build(engine, tmp_path, "payments", "csv", "alice")
    lines = list(csv.DictReader(io.StringIO(body.decode())))
    assert len(lines) == report.rows
    net = sum(int(line["amount"]) for line in lines)
    assert net == sum(values[2] for values in data["alice"].payments.values())


def test_pdf_shows_the_summary(engine: Engine, tmp_path: Path, data: Any) -> None:
    _, body = build(engine, tmp_path, "images", "pdf", "alice")
    text = pypdf.PdfReader(io.BytesIO(body)).pages[0].extract_text()
    assert "Images report" in text
    for preset, (_, _, bytes_in, *_rest) in data["alice"].images.items():
        assert preset in text
        assert f"{bytes_in:,}" in text


def test_an_empty_period_still_makes_every_format(engine: Engine, tmp_path: Path) -> None:
    for fmt in ("csv", "xlsx", "pdf"):
        report, body = build(engine, tmp_path, "jobs", fmt, "nobody")
        assert report.rows == 0
        assert body


def test_percentile_interpolates_like_percentile_cont() -> None:
    assert percentile([], 0.5) is None
    assert percentile([4.0], 0.95) == 4.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5
    assert percentile([float(n) for n in range(1, 101)], 0.95) == pytest.approx(95.05)


def test_period_bounds_follow_the_time_zone() -> None:
    first, after = Period(date(2026, 11, 1), date(2026, 11, 1), "Europe/Berlin").bounds()
    assert first.isoformat() == "2026-10-31T23:00:00+00:00"
    assert after.isoformat() == "2026-11-01T23:00:00+00:00"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"kind": "crawls"}, "kind"),
        ({"format": "docx"}, "format"),
        ({"end": date(2026, 10, 1)}, "end"),
        ({"end": date(2028, 1, 1)}, "end"),
        ({"timezone": "Mars/Olympus"}, "timezone"),
        ({"email_to": ("not an address",)}, "email_to[0]"),
    ],
)
def test_bad_requests_name_the_field(change: dict[str, Any], field: str) -> None:
    values: dict[str, Any] = {"kind": "jobs", "start": START, "end": END, "format": "csv"}
    request = service.Request(**{**values, **change})
    with pytest.raises(service.InvalidReport) as caught:
        service.check(request, Settings(), ReportsSettings())
    assert caught.value.field == field


def test_a_kind_whose_workload_is_off_is_refused() -> None:
    request = service.Request("payments", START, END, "csv")
    with pytest.raises(service.InvalidReport, match="payments workload is not enabled"):
        service.check(request, Settings(workloads="email"), ReportsSettings())
    with pytest.raises(service.InvalidReport) as caught:
        service.check(
            service.Request("jobs", START, END, "csv", email_to=("a@b.io",)),
            Settings(workloads="reports"),
            ReportsSettings(),
        )
    assert caught.value.field == "email_to"


def test_mailing_without_the_email_workload_is_a_permanent_error(tmp_path: Path) -> None:
    from conveyor.core.errors import PermanentError
    from conveyor.workloads.reports.delivery import email_report

    report = Report(id="r1", owner="alice", kind="jobs", start=START, end=END, format="csv")
    report.email_to = ["a@example.com"]
    with pytest.raises(PermanentError, match="email workload is not enabled"):
        email_report(report, LocalStorage(tmp_path), Settings(workloads="reports"), "/x")


@pytest.mark.parametrize(
    ("name", "first", "last"),
    [
        ("yesterday", "2026-03-01", "2026-03-01"),
        ("last_7_days", "2026-02-23", "2026-03-01"),
        ("last_week", "2026-02-23", "2026-03-01"),
        ("last_month", "2026-02-01", "2026-02-28"),
        ("month_to_date", "2026-03-01", "2026-03-02"),
    ],
)
def test_a_relative_period_is_counted_back_from_the_day_it_runs(
    name: str, first: str, last: str
) -> None:
    from datetime import date

    from conveyor.workloads.reports.period import relative

    # Monday 2 March 2026: the week before ran Monday 23 February to Sunday 1 March.
    assert relative(name, date(2026, 3, 2)) == (date.fromisoformat(first), date.fromisoformat(last))


def test_an_unknown_relative_period_names_the_field_and_the_choices() -> None:
    from datetime import date

    from conveyor.workloads.reports.period import relative

    with pytest.raises(ValueError, match="period: 'fortnight' is not one of yesterday, "):
        relative("fortnight", date(2026, 3, 2))
