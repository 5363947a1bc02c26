"""Mailing a finished report through the email workload: attached when small, else a link."""

from __future__ import annotations

from conveyor.core.db import session_scope
from conveyor.core.errors import PermanentError
from conveyor.core.settings import Settings, section
from conveyor.core.storage import Storage
from conveyor.core.workloads import enabled
from conveyor.workloads.reports.models import Report
from conveyor.workloads.reports.service import CONTENT_TYPES, filename
from conveyor.workloads.reports.settings import ReportsSettings

# Emails need an owner; a report a schedule ran for nobody in particular mails as this one.
SYSTEM_OWNER = "conveyor"


def email_report(report: Report, storage: Storage, settings: Settings, download_url: str) -> str:
    """Queue the email; returns its job id."""
    if "email" not in {workload.name for workload in enabled(settings)}:
        raise PermanentError(
            "email_to: the email workload is not enabled; enable it (CONVEYOR_WORKLOADS) "
            "or leave email_to out"
        )
    from conveyor.workloads.email import files, service
    from conveyor.workloads.email.schemas import AttachmentRef, EmailRequest
    from conveyor.workloads.email.settings import EmailSettings
    from conveyor.workloads.email.templates import get_registry

    assert report.storage_key is not None
    assert report.size is not None
    owner = report.owner or SYSTEM_OWNER
    name = filename(report)
    title = f"{report.kind.capitalize()} report, {report.start} to {report.end}"
    attachments: list[AttachmentRef] = []
    limit = section(ReportsSettings).report_email_attach_max_bytes
    if report.size <= limit:
        with session_scope() as session:
            stored = files.store_file(
                session,
                storage,
                owner=owner,
                filename=name,
                content_type=CONTENT_TYPES[report.format],
                data=storage.get(report.storage_key),
            )
            attachments.append(AttachmentRef(file_id=stored.id))
        text = f"{title}: {report.rows:,} rows, attached ({name})."
    else:
        text = f"{title}: {report.rows:,} rows, {report.size:,} bytes.\n\nDownload: {download_url}"
    email_settings = section(EmailSettings)
    created = service.create_email(
        owner,
        EmailRequest(
            to=list(report.email_to),
            subject=title,
            text=text,
            attachments=attachments,
        ),
        settings=email_settings,
        registry=get_registry(email_settings),
    )
    return created.job_id
