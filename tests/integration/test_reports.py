"""The reports workload end to end: API, a real worker, real database, the mail sink."""

from __future__ import annotations

import csv
import email
import io
from email.message import EmailMessage
from email.policy import default as default_policy
from typing import Any

import httpx
import openpyxl
import pypdf
import pytest

from conveyor.core import db
from tests.integration.conftest import Stack
from tests.integration.email_smtp import MailServer, mail, mail_server
from tests.integration.reports_data import END, START, Expected, insert

__all__ = ["mail", "mail_server"]  # fixtures

pytestmark = pytest.mark.integration

PERIOD = {"start": START.isoformat(), "end": END.isoformat()}


def seed(owner: str, number: int) -> Expected:
    with db.session_scope() as session:
        return insert(session, owner, number)


def run_report(
    stack: Stack, client: httpx.Client, headers: dict[str, str] | None = None, **body: Any
) -> dict[str, Any]:
    response = client.post("/api/v1/reports", json={**PERIOD, **body}, headers=headers or {})
    assert response.status_code == 202, response.text
    accepted: dict[str, Any] = response.json()
    assert set(accepted) >= {"id", "job_id", "status"}
    stack.wait_job(accepted["job_id"], {"succeeded"}, timeout=60)
    report: dict[str, Any] = client.get(f"/api/v1/reports/{accepted['id']}").json()
    assert report["status"] == "done", report
    return report


def download(client: httpx.Client, report: dict[str, Any], content_type: str) -> bytes:
    response = client.get(report["download_url"])
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith(content_type)
    name = f"{report['kind']}-report-{report['start']}-{report['end']}.{report['format']}"
    assert name in response.headers["content-disposition"]
    assert len(response.content) == report["size"]
    return response.content


def summary(data: bytes) -> list[tuple[Any, ...]]:
    book = openpyxl.load_workbook(io.BytesIO(data), read_only=True)
    return [
        tuple(row)
        for row in book["Summary"].iter_rows(min_row=4, values_only=True)
        if row and row[0] is not None
    ]


def test_xlsx_pdf_and_csv_figures_match_the_rows(stack: Stack) -> None:
    expected = seed("reports-alice", 11)
    with stack.client(stack.key_for("reports-alice")) as client:
        report = run_report(stack, client, kind="jobs", format="xlsx")
        book = download(client, report, "application/vnd.openxmlformats")
        got = {tuple(row[:3]): row[3:] for row in summary(book)}
        for key, (count, *times) in expected.jobs.items():
            assert got[key][0] == count
            assert list(got[key][1:]) == pytest.approx(times, abs=1e-3)

        report = run_report(stack, client, kind="payments", format="xlsx")
        book = download(client, report, "application/vnd.openxmlformats")
        days = {(row[0], row[1].date().isoformat()): tuple(row[2:]) for row in summary(book)}
        assert days == expected.payments

        report = run_report(stack, client, kind="images", format="pdf")
        text = pypdf.PdfReader(io.BytesIO(download(client, report, "application/pdf")))
        page = text.pages[0].extract_text()
        assert "Images report" in page
        for preset, (_, _, bytes_in, bytes_out, _) in expected.images.items():
            assert preset in page
            assert f"{bytes_in:,}" in page
            assert f"{bytes_out:,}" in page

        report = run_report(stack, client, kind="emails", format="csv")
        lines = list(csv.DictReader(io.StringIO(download(client, report, "text/csv").decode())))
        assert report["rows"] == len(lines)
        for domain, (recipients, sent, bounced, suppressed, _) in expected.emails.items():
            mine = [line for line in lines if line["domain"] == domain]
            assert len(mine) == recipients
            outcomes = [line["outcome"] for line in mine]
            assert (outcomes.count("sent"), outcomes.count("bounced")) == (sent, bounced)
            assert outcomes.count("suppressed") == suppressed


def test_owners_see_only_their_own_data_and_reports(stack: Stack, admin: httpx.Client) -> None:
    seed("reports-carol", 21)
    theirs = seed("reports-dan", 22)
    with stack.client(stack.key_for("reports-carol")) as carol:
        report = run_report(stack, carol, kind="images", format="xlsx")
        presets = {row[0] for row in summary(download(carol, report, "application/vnd"))}
        assert not presets & set(theirs.images)
        listed = carol.get("/api/v1/reports").json()["items"]
        assert listed[0]["id"] == report["id"]
    with stack.client(stack.key_for("reports-dan")) as dan:
        assert dan.get(f"/api/v1/reports/{report['id']}").status_code == 404
        assert dan.get(f"/api/v1/reports/{report['id']}/file").status_code == 404
        assert report["id"] not in {
            item["id"] for item in dan.get("/api/v1/reports").json()["items"]
        }
    assert admin.get(f"/api/v1/reports/{report['id']}").status_code == 200


def test_idempotency_key_answers_the_same_report(stack: Stack) -> None:
    with stack.client(stack.key_for("reports-erin")) as client:
        body = {**PERIOD, "kind": "jobs", "format": "csv"}
        headers = {"Idempotency-Key": "reports-erin-1"}
        first = client.post("/api/v1/reports", json=body, headers=headers)
        again = client.post("/api/v1/reports", json=body, headers=headers)
        assert first.status_code == again.status_code == 202
        assert first.json()["id"] == again.json()["id"]
        other = client.post("/api/v1/reports", json={**body, "format": "pdf"}, headers=headers)
        assert other.status_code == 422


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"end": "2026-10-01"}, "end"),
        ({"start": "2020-01-01"}, "end"),
        ({"kind": "crawls"}, "kind"),
        ({"format": "docx"}, "format"),
        ({"timezone": "Mars/Olympus"}, "timezone"),
    ],
)
def test_bad_input_is_a_422_naming_the_field(
    stack: Stack, change: dict[str, str], field: str
) -> None:
    with stack.client(stack.key_for("reports-alice")) as client:
        body = {**PERIOD, "kind": "jobs", "format": "csv", **change}
        response = client.post("/api/v1/reports", json=body)
        assert response.status_code == 422, response.text
        assert field in str(response.json()["detail"])


def test_emailed_report_arrives_with_the_attachment(stack: Stack, mail: MailServer) -> None:
    expected = seed("reports-fay", 31)
    with stack.client(stack.key_for("reports-fay")) as client:
        report = run_report(
            stack, client, kind="payments", format="csv", email_to=["fay@example.com"]
        )
    [received] = mail.wait_messages("fay@example.com", 1)
    message = email.message_from_bytes(received.data, policy=default_policy)
    assert isinstance(message, EmailMessage)
    assert "Payments report" in str(message["Subject"])
    [part] = list(message.iter_attachments())
    assert part.get_filename() == f"payments-report-{START}-{END}.csv"
    body = part.get_payload(decode=True)
    assert isinstance(body, bytes)
    lines = list(csv.DictReader(io.StringIO(body.decode())))
    assert len(lines) == report["rows"]
    assert sum(int(line["amount"]) for line in lines) == sum(
        values[2] for values in expected.payments.values()
    )


def test_a_scheduled_run_makes_its_own_report_for_the_jobs_owner(stack: Stack) -> None:
    from conveyor.core.jobs import Submission, submit

    expected = seed("reports-gus", 41)
    kwargs = {**PERIOD, "kind": "images", "format": "xlsx", "email_to": []}
    job = submit(Submission("conveyor.workloads.reports.build", kwargs=kwargs, owner="reports-gus"))
    finished = stack.wait_job(job.id, {"succeeded"}, timeout=60)
    report_id = finished["result"]["report_id"]
    with stack.client(stack.key_for("reports-gus")) as client:
        report = client.get(f"/api/v1/reports/{report_id}").json()
        assert report["job_id"] == job.id
        got = {row[0]: tuple(row[1:6]) for row in summary(download(client, report, "application/"))}
    assert got == expected.images


def test_a_scheduled_run_with_a_bad_field_is_a_dead_letter_naming_it(
    stack: Stack, admin: httpx.Client
) -> None:
    from conveyor.core.jobs import Submission, submit

    kwargs = {**PERIOD, "kind": "jobs", "format": "docx"}
    job = submit(Submission("conveyor.workloads.reports.build", kwargs=kwargs, owner="ops"))
    dead = stack.wait_job(job.id, {"dead"}, timeout=60)
    assert "format" in str(dead["error"])


def test_a_schedule_emails_the_daily_payments_report_as_xlsx(
    stack: Stack, mail: MailServer
) -> None:
    """The whole path a user takes: a schedule made through the API, triggered now, and the
    report in the mailbox as an XLSX attachment whose figures are the payments'."""
    expected = seed("reports-hal", 51)
    with stack.client(stack.key_for("reports-hal")) as client:
        created = client.post(
            "/api/v1/schedules",
            json={
                "name": "daily-payments",
                "task": "conveyor.workloads.reports.build",
                "kwargs": {
                    **PERIOD,
                    "kind": "payments",
                    "format": "xlsx",
                    "email_to": ["hal@example.com"],
                },
                "cron": "0 7 * * *",
                "timezone": "Europe/Berlin",
            },
        )
        assert created.status_code == 201, created.text
        triggered = client.post(f"/api/v1/schedules/{created.json()['id']}/trigger")
        assert triggered.status_code == 202, triggered.text
        stack.wait_job(triggered.json()["job_id"], {"succeeded"}, timeout=60)
    [received] = mail.wait_messages("hal@example.com", 1)
    message = email.message_from_bytes(received.data, policy=default_policy)
    assert isinstance(message, EmailMessage)
    [part] = list(message.iter_attachments())
    assert part.get_filename() == f"payments-report-{START}-{END}.xlsx"
    data = part.get_payload(decode=True)
    assert isinstance(data, bytes)
    days = {(row[0], row[1].date().isoformat()): tuple(row[2:]) for row in summary(data)}
    assert days == expected.payments


def test_a_scheduled_run_with_a_relative_period_reports_on_the_days_before_it(
    stack: Stack,
) -> None:
    from datetime import UTC, datetime, timedelta

    from conveyor.core.jobs import Submission, submit

    kwargs = {"kind": "jobs", "format": "csv", "period": "yesterday", "timezone": "UTC"}
    job = submit(Submission("conveyor.workloads.reports.build", kwargs=kwargs, owner="reports-ida"))
    finished = stack.wait_job(job.id, {"succeeded"}, timeout=60)
    with stack.client(stack.key_for("reports-ida")) as client:
        report = client.get(f"/api/v1/reports/{finished['result']['report_id']}").json()
    yesterday = (datetime.now(UTC).date() - timedelta(days=1)).isoformat()
    assert (report["start"], report["end"]) == (yesterday, yesterday)
