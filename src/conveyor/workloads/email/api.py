"""HTTP routes of the email workload: emails, batches, templates, suppressions, dev mailbox."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, Response, status
from starlette.concurrency import run_in_threadpool

from conveyor.api.deps import CallerDep, SessionDep
from conveyor.api.idempotency import IdempotentRoute
from conveyor.api.paging import Offset
from conveyor.api.schemas import Problem
from conveyor.api.urls import path_to
from conveyor.core.ledger import iso
from conveyor.core.settings import Settings, get_settings, section
from conveyor.local.mail_sink import Mailbox
from conveyor.workloads.email import dev_mailbox, service, suppressions
from conveyor.workloads.email.addresses import normalize_email
from conveyor.workloads.email.errors import InvalidInput
from conveyor.workloads.email.models import EmailStatus, Suppression
from conveyor.workloads.email.schemas import (
    BatchAccepted,
    BatchRequest,
    EmailAccepted,
    EmailRequest,
    SuppressionOut,
    SuppressionRequest,
)
from conveyor.workloads.email.settings import EmailSettings
from conveyor.workloads.email.templates import RenderError, get_registry

router = APIRouter(tags=["email"], route_class=IdempotentRoute)
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": Problem}}
INVALID: dict[int | str, dict[str, Any]] = {422: {"model": Problem}}


def _unprocessable(exc: InvalidInput) -> HTTPException:
    return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc))


@router.post(
    "/api/v1/emails",
    response_model=EmailAccepted,
    status_code=status.HTTP_202_ACCEPTED,
    responses=INVALID,
    summary="Send an email",
    description=(
        "A template (`template` + `context`) or `subject` with `text` and/or `html`. "
        "Everything is checked and the template rendered now: bad input is a 422 naming "
        "the field, never a failed job. `send_at` in the future schedules it."
    ),
)
async def send_email(body: EmailRequest, caller: CallerDep, request: Request) -> dict[str, Any]:
    settings = section(EmailSettings)
    try:
        created = await run_in_threadpool(
            service.create_email,
            caller.owner,
            body,
            settings=settings,
            registry=get_registry(settings),
        )
    except InvalidInput as exc:
        raise _unprocessable(exc) from None
    return {
        "id": created.email.id,
        "job_id": created.job_id,
        "status": created.email.status,
        "url": path_to(request, "conveyor.email", email_id=created.email.id),
    }


@router.post(
    "/api/v1/emails/batch",
    response_model=BatchAccepted,
    status_code=status.HTTP_202_ACCEPTED,
    responses=INVALID,
    summary="Send one email per recipient (up to 10,000)",
    description=(
        "Each recipient gets the template rendered with the shared `context` merged with "
        "its own. Sent by chunk jobs in a Celery group under one batch job; bulk mail "
        "carries List-Unsubscribe."
    ),
)
async def send_batch(body: BatchRequest, caller: CallerDep, request: Request) -> dict[str, Any]:
    settings = section(EmailSettings)
    try:
        batch = await run_in_threadpool(
            service.create_batch,
            caller.owner,
            body,
            settings=settings,
            registry=get_registry(settings),
        )
    except InvalidInput as exc:
        raise _unprocessable(exc) from None
    assert batch.job_id is not None
    return {
        "id": batch.id,
        "job_id": batch.job_id,
        "status": EmailStatus.QUEUED,
        "total": batch.total,
        "chunks": batch.chunks,
        "url": path_to(request, "conveyor.email_batch", batch_id=batch.id),
    }


@router.get(
    "/api/v1/emails/batch/{batch_id}",
    name="conveyor.email_batch",
    responses=NOT_FOUND,
    summary="A batch: progress, summary and (optionally) per-recipient status",
)
def get_batch(
    batch_id: str,
    caller: CallerDep,
    session: SessionDep,
    recipients: Annotated[bool, Query(description="Include per-recipient status.")] = False,
    recipient_status: Annotated[str | None, Query(alias="status", max_length=16)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Offset = 0,
) -> dict[str, Any]:
    batch = service.get_batch(session, batch_id, caller.scope)
    if batch is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "batch not found")
    body = service.batch_summary(session, batch)
    if recipients or recipient_status:
        body["recipients"] = service.batch_recipients(
            session, batch, status=recipient_status, limit=limit, offset=offset
        )
    return body


@router.get(
    "/api/v1/emails/{email_id}",
    responses=NOT_FOUND,
    summary="One email and its status",
    name="conveyor.email",
)
def get_email(email_id: str, caller: CallerDep, session: SessionDep) -> dict[str, Any]:
    email = service.get_email(session, email_id, caller.scope)
    if email is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "email not found")
    return service.email_to_dict(email)


# --- templates -----------------------------------------------------------------------


@router.get("/api/v1/email-templates", summary="Templates in the registry")
def list_templates(_: CallerDep) -> dict[str, Any]:
    return {"items": [{"name": name} for name in get_registry().names()]}


@router.get(
    "/api/v1/email-templates/{name}/preview",
    responses={**NOT_FOUND, **INVALID},
    summary="Render a template with its sample context",
    description="The template's `sample.json`; the rendered subject, HTML and text.",
)
def preview_template(name: str, _: CallerDep) -> dict[str, Any]:
    registry = get_registry()
    if not registry.exists(name):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no template {name!r}")
    context = registry.sample(name)
    try:
        rendered = registry.render(name, context)
    except RenderError as exc:
        raise _unprocessable(exc) from None
    return {
        "name": name,
        "context": context,
        "subject": rendered.subject,
        "html": rendered.html,
        "text": rendered.text,
    }


# --- suppressions ----------------------------------------------------------------------


def _suppression(entry: Suppression) -> dict[str, Any]:
    return {
        "id": entry.id,
        "email": entry.address,
        "reason": entry.reason,
        "smtp_code": entry.smtp_code,
        "smtp_reply": entry.smtp_reply,
        "email_id": entry.email_id,
        "created_at": iso(entry.created_at),
    }


@router.get("/api/v1/email-suppressions", summary="Suppressed addresses")
def list_suppressions(
    caller: CallerDep,
    session: SessionDep,
    email: Annotated[str | None, Query(max_length=320)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Offset = 0,
) -> dict[str, Any]:
    entries = suppressions.listing(session, caller.scope, address=email, limit=limit, offset=offset)
    return {"items": [_suppression(entry) for entry in entries]}


@router.post(
    "/api/v1/email-suppressions",
    response_model=SuppressionOut,
    status_code=status.HTTP_201_CREATED,
    responses=INVALID,
    summary="Suppress an address: sends to it are skipped",
)
def add_suppression(
    body: SuppressionRequest, caller: CallerDep, session: SessionDep
) -> dict[str, Any]:
    try:
        address = normalize_email(body.email, "email")
    except InvalidInput as exc:
        raise _unprocessable(exc) from None
    entry = suppressions.add(session, caller.owner, address, reason=body.reason)
    session.commit()
    return _suppression(entry)


@router.delete(
    "/api/v1/email-suppressions/{suppression_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=NOT_FOUND,
    summary="Remove an address from the suppression list",
)
def delete_suppression(suppression_id: str, caller: CallerDep, session: SessionDep) -> Response:
    entry = session.get(Suppression, suppression_id)
    if entry is None or (caller.scope is not None and entry.owner != caller.scope):
        raise HTTPException(status.HTTP_404_NOT_FOUND, "suppression not found")
    session.delete(entry)
    session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)


# --- the local mail sink's mailbox -------------------------------------------------------


def _mailbox() -> Mailbox:
    email = section(EmailSettings)
    if not email.mail_sink:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            "no mailbox: the local mail sink is off (conveyor up turns it on)",
        )
    return Mailbox(get_settings().data_dir / "mailbox", email.mail_sink_max_messages)


@router.get(
    "/api/v1/dev/mailbox",
    responses=NOT_FOUND,
    tags=["dev"],
    summary="Messages the local mail sink captured, newest first",
    description="An owner's key sees the mail its owner sent; an admin key sees all.",
)
def list_mailbox(
    caller: CallerDep, session: SessionDep, limit: Annotated[int, Query(ge=1, le=500)] = 50
) -> dict[str, Any]:
    return {"items": dev_mailbox.listing(_mailbox(), session, caller.scope, limit)}


@router.get(
    "/api/v1/dev/mailbox/{message_id}",
    responses=NOT_FOUND,
    tags=["dev"],
    summary="One captured message with its parts",
)
def get_mailbox_message(message_id: str, caller: CallerDep, session: SessionDep) -> dict[str, Any]:
    detail = dev_mailbox.detail(_mailbox(), session, caller.scope, message_id)
    if detail is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "message not found")
    return detail


@router.delete(
    "/api/v1/dev/mailbox",
    tags=["dev"],
    responses=NOT_FOUND,
    summary="Empty the mailbox",
    description="An owner's key deletes the mail its owner sent; an admin key deletes all.",
)
def clear_mailbox(caller: CallerDep, session: SessionDep) -> dict[str, Any]:
    return {"deleted": dev_mailbox.clear(_mailbox(), session, caller.scope)}


def body_limits(settings: Settings) -> dict[str, int]:
    return {"/api/v1/emails/batch": section(EmailSettings).email_batch_max_body_bytes}
