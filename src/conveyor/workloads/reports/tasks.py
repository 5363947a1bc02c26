"""Celery task of the reports workload (queue `reports`): a thin adapter over `service`."""

from __future__ import annotations

import hashlib
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from celery import shared_task

from conveyor.core.db import get_engine, session_scope
from conveyor.core.effects import run_once
from conveyor.core.errors import JobCancelled, PermanentError
from conveyor.core.jobs import HEADER_OWNER
from conveyor.core.models import utcnow
from conveyor.core.settings import get_settings, section
from conveyor.core.storage import get_storage
from conveyor.core.task import ConveyorTask
from conveyor.workloads.reports import delivery, service
from conveyor.workloads.reports.models import Report, ReportStatus
from conveyor.workloads.reports.period import relative
from conveyor.workloads.reports.settings import ReportsSettings


class ReportTask(ConveyorTask):
    def on_failure(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        super().on_failure(exc, task_id, args, kwargs, einfo)
        report_id = (kwargs or {}).get("report_id")
        if not report_id or isinstance(exc, JobCancelled):
            return
        with session_scope() as session:
            report = session.get(Report, report_id)
            if report is not None and report.status != ReportStatus.DONE:
                report.status = ReportStatus.FAILED
                report.error = f"{type(exc).__name__}: {exc}"[:2000]
                report.finished_at = utcnow()


def _date(value: str, field: str) -> date:
    try:
        return date.fromisoformat(value)
    except (TypeError, ValueError):
        raise PermanentError(f"{field}: {value!r} is not a date like 2026-11-01") from None


def _days(
    start: str | None, end: str | None, period: str | None, timezone: str
) -> tuple[date, date]:
    if period is not None:
        if start is not None or end is not None:
            raise PermanentError("period: give either `period` or `start` and `end`, not both")
        try:
            today = datetime.now(ZoneInfo(timezone)).date()
        except (ValueError, ZoneInfoNotFoundError):
            raise PermanentError(f"timezone: {timezone!r} is not an IANA time zone") from None
        try:
            return relative(period, today)
        except ValueError as exc:
            raise PermanentError(str(exc)) from None
    if start is None or end is None:
        raise PermanentError("start, end: both are needed, or a `period` such as yesterday")
    return _date(start, "start"), _date(end, "end")


@shared_task(bind=True, base=ReportTask, name=service.BUILD_TASK)
def build(
    self: ReportTask,
    kind: str,
    format: str,
    start: str | None = None,
    end: str | None = None,
    timezone: str = "UTC",
    email_to: list[str] | None = None,
    report_id: str | None = None,
    period: str | None = None,
) -> dict[str, Any]:
    """Build a report, store it and mail it to `email_to`. Without `report_id` (a schedule)
    the report row is made here, for the job's owner, or for all owners when it has none.
    A schedule names a `period` (yesterday, last_week...) instead of dates: each run reports
    on the period before the day it runs, in `timezone`."""
    settings = get_settings()
    reports = section(ReportsSettings)
    first, last = _days(start, end, period, timezone)
    request = service.Request(kind, first, last, format, timezone, tuple(email_to or ()))
    try:
        service.check(request, settings, reports)
    except service.InvalidReport as exc:
        raise PermanentError(str(exc)) from None
    session = self.db
    # A scheduled run's row is named after its job, so a retry or redelivery finds it again.
    report_id = report_id or hashlib.sha256((self.request.id or "").encode()).hexdigest()[:32]
    report = session.get(Report, report_id)
    if report is None:
        owner = getattr(self.request, HEADER_OWNER, None)
        report = service.create(session, owner, request, report_id=report_id)
        report.job_id = self.request.id
    if report.status != ReportStatus.DONE:
        report.status = ReportStatus.RUNNING
        session.commit()
        storage = get_storage(settings)

        def progress(rows: int) -> None:
            self.report_progress(rows, None, f"{rows:,} rows")

        built = service.build(get_engine(), storage, report, reports, progress)
        report.storage_key, report.size, report.rows = built.key, built.size, built.rows
        report.status, report.error, report.finished_at = ReportStatus.DONE, None, utcnow()
        session.commit()
    result: dict[str, Any] = {"report_id": report.id, "rows": report.rows, "size": report.size}
    if report.email_to:
        storage = get_storage(settings)
        url = storage.url(report.storage_key or "") or (
            f"{settings.public_base_url or ''}/api/v1/reports/{report.id}/file"
        )
        # Once per report, however often this job is redelivered or retried.
        result["email_job_id"] = run_once(
            f"report-email:{report.id}", delivery.email_report, report, storage, settings, url
        )
    return result
