"""Reports: checked requests, built files (rows streamed from the database), and delivery.

No Celery and no FastAPI here: `tasks` and `api` are adapters around these functions.
"""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from conveyor.core.ledger import iso
from conveyor.core.models import utcnow
from conveyor.core.settings import Settings
from conveyor.core.storage import Storage
from conveyor.core.workloads import enabled
from conveyor.workloads.reports.formats import Content, CsvFormat, Format, XlsxFormat
from conveyor.workloads.reports.kinds import KINDS
from conveyor.workloads.reports.models import Report, ReportStatus
from conveyor.workloads.reports.pdf import PdfFormat
from conveyor.workloads.reports.period import Period
from conveyor.workloads.reports.settings import ReportsSettings
from conveyor.workloads.reports.table import Row

BUILD_TASK = "conveyor.workloads.reports.build"
QUEUE = "reports"


class InvalidReport(ValueError):
    """A request that cannot become a report; the API answers 422 with `field: message`."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def formats(settings: ReportsSettings) -> dict[str, Format]:
    return {
        "csv": CsvFormat(),
        "xlsx": XlsxFormat(),
        "pdf": PdfFormat(max_rows=settings.report_pdf_max_rows),
    }


@dataclass(frozen=True)
class Request:
    kind: str
    start: date
    end: date
    format: str
    timezone: str = "UTC"
    email_to: tuple[str, ...] = ()

    @property
    def period(self) -> Period:
        return Period(self.start, self.end, self.timezone)


def check(request: Request, settings: Settings, reports: ReportsSettings) -> None:
    """Everything a worker would trip over, refused up front with the field to fix."""
    definition = KINDS.get(request.kind)
    if definition is None:
        raise InvalidReport("kind", f"unknown kind {request.kind!r}; one of {', '.join(KINDS)}")
    if request.format not in formats(reports):
        raise InvalidReport("format", f"unknown format {request.format!r}; csv, xlsx or pdf")
    on = {workload.name for workload in enabled(settings)}
    if definition.workload is not None and definition.workload not in on:
        raise InvalidReport(
            "kind",
            f"the {definition.workload} workload is not enabled here; install and enable it "
            "(CONVEYOR_WORKLOADS) or ask for another kind",
        )
    if request.end < request.start:
        raise InvalidReport(
            "end", f"{request.end} is before start {request.start}; give a later end"
        )
    days = request.period.days
    if days > reports.report_max_days:
        raise InvalidReport(
            "end",
            f"the period is {days} days, at most {reports.report_max_days} "
            "(CONVEYOR_REPORT_MAX_DAYS); split it into shorter reports",
        )
    try:
        ZoneInfo(request.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidReport(
            "timezone",
            f"unknown time zone {request.timezone!r}; use an IANA name like Europe/Berlin",
        ) from None
    for index, address in enumerate(request.email_to):
        local, at, domain = address.strip().rpartition("@")
        if not (local and at and "." in domain) or any(c.isspace() for c in address.strip()):
            raise InvalidReport(f"email_to[{index}]", f"{address!r} is not an email address")
    if request.email_to and "email" not in on:
        raise InvalidReport(
            "email_to", "the email workload is not enabled here; enable it or leave email_to out"
        )


def create(
    session: Session, owner: str | None, request: Request, report_id: str | None = None
) -> Report:
    report = Report(
        id=report_id or uuid.uuid4().hex,
        owner=owner,
        kind=request.kind,
        start=request.start,
        end=request.end,
        timezone=request.timezone,
        format=request.format,
        status=ReportStatus.QUEUED,
        job_id=str(uuid.uuid4()),
        email_to=list(request.email_to),
        created_at=utcnow(),
    )
    session.add(report)
    session.flush()
    return report


def task_kwargs(report: Report) -> dict[str, Any]:
    return {
        "kind": report.kind,
        "start": report.start.isoformat(),
        "end": report.end.isoformat(),
        "format": report.format,
        "timezone": report.timezone,
        "email_to": list(report.email_to),
        "report_id": report.id,
    }


def get(session: Session, report_id: str, owner: str | None) -> Report | None:
    report = session.get(Report, report_id)
    if report is None or (owner is not None and report.owner != owner):
        return None
    return report


def listing(session: Session, owner: str | None, limit: int, offset: int) -> list[Report]:
    query = select(Report).order_by(Report.created_at.desc(), Report.id.desc())
    if owner is not None:
        query = query.where(Report.owner == owner)
    return list(session.scalars(query.limit(limit).offset(offset)))


def filename(report: Report) -> str:
    return f"{report.kind}-report-{report.start}-{report.end}.{report.format}"


def to_dict(report: Report, download_url: str | None = None) -> dict[str, Any]:
    return {
        "id": report.id,
        "job_id": report.job_id,
        "kind": report.kind,
        "start": report.start,
        "end": report.end,
        "timezone": report.timezone,
        "format": report.format,
        "status": report.status,
        "rows": report.rows,
        "size": report.size,
        "error": report.error,
        "email_to": list(report.email_to),
        "created_at": iso(report.created_at),
        "finished_at": iso(report.finished_at),
        "download_url": download_url if report.status == ReportStatus.DONE else None,
    }


@dataclass(frozen=True)
class Built:
    rows: int
    size: int
    key: str
    content_type: str


def build(
    engine: Engine,
    storage: Storage,
    report: Report,
    reports: ReportsSettings,
    progress: Callable[[int], None] = lambda rows: None,
) -> Built:
    """Stream the report's rows from the database into a file, then store the file.

    Rows are read `report_chunk_rows` at a time through a server-side cursor and written
    as they come: memory holds one chunk and the summary, never the whole result.
    """
    definition = KINDS[report.kind]
    fmt = formats(reports)[report.format]
    period = Period(report.start, report.end, report.timezone)
    size = reports.report_chunk_rows
    counted = [0]
    with engine.connect() as connection, tempfile.TemporaryDirectory(prefix="conveyor-") as tmp:
        summary = definition.summary(period, report.owner, size)

        def detail() -> Iterator[list[Row]]:
            for chunk in definition.chunks(connection, period, report.owner, size):
                summary.add(chunk)
                yield chunk
                counted[0] += len(chunk)
                progress(counted[0])

        target = Path(tmp) / f"report.{fmt.extension}"
        fmt.write(
            target,
            Content(definition, period, report.owner, detail(), lambda: summary.finish(connection)),
        )
        key = f"reports/{report.id}/{filename(report)}"
        storage.put_file(key, target, fmt.content_type)
        return Built(counted[0], target.stat().st_size, key, fmt.content_type)


CONTENT_TYPES = {
    "csv": CsvFormat.content_type,
    "xlsx": XlsxFormat.content_type,
    "pdf": PdfFormat.content_type,
}
