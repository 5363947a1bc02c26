"""HTTP routes of the reports workload: request a report, follow it, download it."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, status
from fastapi.responses import FileResponse, RedirectResponse, Response

from conveyor.api.deps import CallerDep, SessionDep
from conveyor.api.idempotency import IdempotentRoute
from conveyor.api.paging import Offset
from conveyor.api.schemas import Problem
from conveyor.api.urls import path_to, public_base_url
from conveyor.core.jobs import Submission, submit
from conveyor.core.models import utcnow
from conveyor.core.settings import get_settings, section
from conveyor.core.storage import LocalStorage, NotFound, get_storage
from conveyor.workloads.reports import service
from conveyor.workloads.reports.models import Report, ReportStatus
from conveyor.workloads.reports.schemas import ReportAccepted, ReportList, ReportOut, ReportRequest
from conveyor.workloads.reports.settings import ReportsSettings

router = APIRouter(prefix="/api/v1/reports", tags=["reports"], route_class=IdempotentRoute)
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": Problem}}


def _not_found() -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, "report not found")


def _out(request: Request, report: Report) -> dict[str, Any]:
    url = None
    if report.status == ReportStatus.DONE:
        url = f"{public_base_url(request.scope)}/api/v1/reports/{report.id}/file"
    return service.to_dict(report, url)


@router.post(
    "",
    response_model=ReportAccepted,
    status_code=status.HTTP_202_ACCEPTED,
    responses={422: {"model": Problem}},
    summary="Build a report",
    description=(
        "Jobs, emails, payments or images over whole days (`start` to `end`, inclusive, in "
        "`timezone`), as CSV, XLSX or PDF; optionally mailed to `email_to`. Send an "
        "`Idempotency-Key` to make a retried request safe."
    ),
)
def create_report(
    body: ReportRequest, caller: CallerDep, session: SessionDep, request: Request
) -> dict[str, Any]:
    wanted = service.Request(
        body.kind, body.start, body.end, body.format, body.timezone, tuple(body.email_to)
    )
    try:
        service.check(wanted, get_settings(), section(ReportsSettings))
    except service.InvalidReport as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
    report = service.create(session, caller.owner, wanted)
    session.commit()
    try:
        submit(
            Submission(
                task_name=service.BUILD_TASK,
                kwargs=service.task_kwargs(report),
                owner=caller.owner,
                job_id=report.job_id,
            )
        )
    except Exception as exc:
        # The broker refused it: the row must not promise a report that will never come.
        report.status, report.error, report.finished_at = ReportStatus.FAILED, str(exc), utcnow()
        session.commit()
        raise
    assert report.job_id is not None
    return {
        "id": report.id,
        "job_id": report.job_id,
        "status": report.status,
        "url": path_to(request, "conveyor.report", report_id=report.id),
    }


@router.get("", response_model=ReportList, summary="Reports, newest first")
def list_reports(
    caller: CallerDep,
    session: SessionDep,
    request: Request,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Offset = 0,
) -> dict[str, Any]:
    found = service.listing(session, caller.scope, limit + 1, offset)
    return {
        "items": [_out(request, report) for report in found[:limit]],
        "next_offset": offset + limit if len(found) > limit else None,
    }


@router.get(
    "/{report_id}",
    name="conveyor.report",
    response_model=ReportOut,
    responses=NOT_FOUND,
    summary="A report: status, rows, size and, when done, its download URL",
)
def get_report(
    report_id: str, caller: CallerDep, session: SessionDep, request: Request
) -> dict[str, Any]:
    report = service.get(session, report_id, caller.scope)
    if report is None:
        raise _not_found()
    return _out(request, report)


@router.get(
    "/{report_id}/file",
    responses={**NOT_FOUND, 200: {"description": "The report file."}},
    summary="Download a finished report",
)
def get_report_file(report_id: str, caller: CallerDep, session: SessionDep) -> Response:
    report = service.get(session, report_id, caller.scope)
    if report is None or report.status != ReportStatus.DONE or report.storage_key is None:
        raise _not_found()
    storage = get_storage()
    name = service.filename(report)
    media_type = service.CONTENT_TYPES[report.format]
    direct = storage.url(report.storage_key)
    if direct is not None:
        return RedirectResponse(direct, status_code=status.HTTP_307_TEMPORARY_REDIRECT)
    headers = {"Cache-Control": "private, no-store"}
    if isinstance(storage, LocalStorage):
        path = storage.path(report.storage_key)
        if not path.is_file():
            raise _not_found()
        # Streamed from disk: a large report is never read into memory whole.
        return FileResponse(path, media_type=media_type, filename=name, headers=headers)
    try:
        body = storage.get(report.storage_key)
    except NotFound:
        raise _not_found() from None
    headers["Content-Disposition"] = f'attachment; filename="{name}"'
    return Response(body, media_type=media_type, headers=headers)
