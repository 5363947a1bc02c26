"""The email workload's domain logic: emails and batches in, rows and jobs out.

Everything a request can get wrong is found here, before a row or a message exists:
addresses, header values, templates and their variables, attachments, sizes. Templates are
rendered now and the result stored, so a worker never renders and never fails on one.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote

from celery import Celery, group
from sqlalchemy import func, insert, select, update
from sqlalchemy.orm import Session

from conveyor.core import ledger
from conveyor.core.celery_app import get_celery
from conveyor.core.db import session_scope
from conveyor.core.jobs import HEADER_OWNER, HEADER_RECORDED, Submission, submit, submit_workflow
from conveyor.core.models import utcnow
from conveyor.workloads.email.addresses import (
    Address,
    check_header_value,
    parse_address,
    parse_addresses,
)
from conveyor.workloads.email.errors import InvalidInput
from conveyor.workloads.email.html_text import html_to_text
from conveyor.workloads.email.models import Email, EmailBatch, EmailStatus, StoredFile
from conveyor.workloads.email.schemas import AttachmentRef, BatchRequest, EmailRequest
from conveyor.workloads.email.settings import EmailSettings
from conveyor.workloads.email.templates import RenderError, TemplateRegistry

SEND_TASK = "conveyor.workloads.email.send"
DISPATCH_TASK = "conveyor.workloads.email.dispatch_due"
QUEUE = "email"


@dataclass(frozen=True)
class Content:
    subject: str
    text: str
    html: str | None
    template: str | None


def new_message_id(settings: EmailSettings) -> str:
    return f"<{uuid.uuid4().hex}@{settings.email_message_id_domain}>"


def _formatted(address: Address) -> str:
    from email.utils import formataddr

    return formataddr((address.name, address.email)) if address.name else address.email


def render_content(
    registry: TemplateRegistry,
    *,
    template: str | None,
    context: dict[str, Any],
    subject: str | None,
    text: str | None,
    html: str | None,
    where: str = "",
) -> Content:
    """The subject and parts of one email, from a template or given as they are."""
    if template is not None:
        if subject is not None or text is not None or html is not None:
            raise InvalidInput(
                f"{where}template", "give either a template or subject/text/html, not both"
            )
        try:
            rendered = registry.render(template, context)
        except RenderError as exc:
            raise InvalidInput(f"{where}{exc.field}", exc.message) from None
        check_header_value(rendered.subject, f"{where}subject")
        return Content(rendered.subject, rendered.text, rendered.html, template)
    if not subject:
        raise InvalidInput(f"{where}subject", "required when no template is given")
    check_header_value(subject, f"{where}subject")
    if not text and not html:
        raise InvalidInput(f"{where}text", "give text, html or a template")
    return Content(subject, text or html_to_text(html or ""), html, None)


def _sender(value: str | None, settings: EmailSettings) -> str:
    if value is None:
        return settings.email_from
    return _formatted(parse_address(value, "from"))


def _reply_to(value: str | None) -> str | None:
    return None if value is None else _formatted(parse_address(value, "reply_to"))


def resolve_attachments(
    session: Session, owner: str, refs: list[AttachmentRef], settings: EmailSettings
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    total = 0
    for index, ref in enumerate(refs):
        field = f"attachments[{index}]"
        stored = session.get(StoredFile, ref.file_id)
        if stored is None or stored.owner != owner:
            raise InvalidInput(f"{field}.file_id", f"no file {ref.file_id!r}; upload it first")
        filename = check_header_value(
            ref.filename or stored.filename, f"{field}.filename", max_length=255
        )
        total += stored.size
        out.append(
            {
                "file_id": stored.id,
                "filename": filename,
                "content_type": stored.content_type,
                "size": stored.size,
            }
        )
    if total > settings.email_max_attachments_bytes:
        raise InvalidInput(
            "attachments",
            f"{total} bytes in all; at most {settings.email_max_attachments_bytes} per email",
        )
    return out


def _send_delay(send_at: datetime | None) -> float:
    if send_at is None:
        return 0.0
    if send_at.tzinfo is None:
        raise InvalidInput("send_at", "needs a time zone, e.g. 2030-01-01T09:00:00Z")
    return max(0.0, (send_at - utcnow()).total_seconds())


@dataclass(frozen=True)
class Created:
    email: Email
    job_id: str


def create_email(
    owner: str,
    body: EmailRequest,
    *,
    settings: EmailSettings,
    registry: TemplateRegistry,
    app: Celery | None = None,
) -> Created:
    """Validate, render and store one email, then queue (or schedule) its job."""
    limit = settings.email_max_recipients
    to = parse_addresses(body.to, "to", limit=limit)
    cc = parse_addresses(body.cc, "cc", limit=limit)
    bcc = parse_addresses(body.bcc, "bcc", limit=limit)
    if len(to) + len(cc) + len(bcc) > limit:
        raise InvalidInput("to", f"at most {limit} recipients in to, cc and bcc together")
    sender = _sender(body.sender, settings)
    reply_to = _reply_to(body.reply_to)
    content = render_content(
        registry,
        template=body.template,
        context=body.context,
        subject=body.subject,
        text=body.text,
        html=body.html,
    )
    delay = _send_delay(body.send_at)
    scheduled = delay > settings.email_schedule_countdown_max
    email_id = uuid.uuid4().hex
    job_id = str(uuid.uuid4())
    kwargs = {"email_ids": [email_id]}
    with session_scope() as session:
        attachments = resolve_attachments(session, owner, body.attachments, settings)
        email = Email(
            id=email_id,
            owner=owner,
            job_id=job_id,
            status=EmailStatus.SCHEDULED if scheduled else EmailStatus.QUEUED,
            message_id=new_message_id(settings),
            sender=sender,
            reply_to=reply_to,
            to=[item.to_json() for item in to],
            cc=[item.to_json() for item in cc],
            bcc=[item.to_json() for item in bcc],
            subject=content.subject,
            text=content.text,
            html=content.html,
            template=content.template,
            headers={},
            attachments=attachments,
            send_at=body.send_at,
            attempts=0,
            refused=[],
            skipped=[],
            created_at=utcnow(),
            updated_at=utcnow(),
        )
        session.add(email)
        if scheduled:
            # The job exists from now on; Beat publishes it when it is due (dispatch_due).
            job = ledger.create_job(
                session,
                ledger.NewJob(id=job_id, name=SEND_TASK, queue=QUEUE, owner=owner, kwargs=kwargs),
            )
            job.progress_message = (
                f"scheduled for {body.send_at.isoformat() if body.send_at else ''}"
            )
    if not scheduled:
        submit(
            Submission(
                task_name=SEND_TASK,
                kwargs=kwargs,
                owner=owner,
                job_id=job_id,
                countdown=delay or None,
            ),
            app=app,
        )
    return Created(email=email, job_id=job_id)


def list_unsubscribe(address: str, url: str | None, mailto: str | None) -> dict[str, str]:
    """List-Unsubscribe (RFC 2369) and, with a URL, one-click List-Unsubscribe-Post (RFC 8058)."""
    parts = []
    if mailto:
        parts.append(f"<mailto:{mailto}?subject=unsubscribe>")
    if url:
        parts.append(f"<{url.replace('{email}', quote(address, safe=''))}>")
    headers = {"List-Unsubscribe": ", ".join(parts)}
    if url:
        headers["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    return headers


def _unsubscribe_target(
    body: BatchRequest, settings: EmailSettings
) -> tuple[str | None, str | None]:
    url = body.unsubscribe_url or settings.email_unsubscribe_url
    if url is not None:
        check_header_value(url, "unsubscribe_url", max_length=2000)
        if not url.startswith(("https://", "http://")):
            raise InvalidInput("unsubscribe_url", "must be an http(s) URL")
    mailto = settings.email_unsubscribe_mailto
    if url is None and mailto is None:
        # Bulk mail always carries an unsubscribe route; this one at least reaches the sender.
        mailto = f"unsubscribe@{settings.email_message_id_domain}"
    return url, mailto


def create_batch(
    owner: str,
    body: BatchRequest,
    *,
    settings: EmailSettings,
    registry: TemplateRegistry,
    app: Celery | None = None,
) -> EmailBatch:
    """One email per recipient, sent by chunk tasks run as a Celery group."""
    count = len(body.recipients)
    if count > settings.email_batch_max_recipients:
        raise InvalidInput(
            "recipients",
            f"at most {settings.email_batch_max_recipients} recipients per batch (got {count})",
        )
    if body.template is not None and not registry.exists(body.template):
        render_content(
            registry, template=body.template, context={}, subject=None, text=None, html=None
        )
    sender = _sender(body.sender, settings)
    reply_to = _reply_to(body.reply_to)
    url, mailto = _unsubscribe_target(body, settings)
    batch_id = uuid.uuid4().hex
    size = settings.email_batch_chunk_size
    chunk_ids = [str(uuid.uuid4()) for _ in range(0, count, size)]
    now = utcnow()
    rows: list[dict[str, Any]] = []
    for index, recipient in enumerate(body.recipients):
        where = f"recipients[{index}]."
        address = parse_address(recipient.to, f"{where}to")
        content = render_content(
            registry,
            template=body.template,
            context={**body.context, **recipient.context},
            subject=body.subject,
            text=body.text,
            html=body.html,
            where=where,
        )
        rows.append(
            {
                "id": uuid.uuid4().hex,
                "owner": owner,
                "job_id": chunk_ids[index // size],
                "batch_id": batch_id,
                "status": EmailStatus.QUEUED,
                "message_id": new_message_id(settings),
                "sender": sender,
                "reply_to": reply_to,
                "to": [address.to_json()],
                "cc": [],
                "bcc": [],
                "subject": content.subject,
                "text": content.text,
                "html": content.html,
                "template": content.template,
                "headers": list_unsubscribe(address.email, url, mailto),
                "attachments": [],
                "send_at": None,
                "attempts": 0,
                "refused": [],
                "skipped": [],
                "created_at": now,
                "updated_at": now,
            }
        )
    with session_scope() as session:
        batch = EmailBatch(
            id=batch_id,
            owner=owner,
            template=body.template,
            total=count,
            chunks=len(chunk_ids),
            created_at=now,
        )
        session.add(batch)
        session.flush()
        for start in range(0, len(rows), 1000):
            session.execute(insert(Email), rows[start : start + 1000])
    app = app or get_celery()
    chunks = [
        app.signature(
            SEND_TASK,
            kwargs={"email_ids": [row["id"] for row in rows[start : start + size]], "bulk": True},
        ).set(task_id=chunk_ids[start // size], queue=QUEUE)
        for start in range(0, count, size)
    ]
    parent = submit_workflow(group(chunks), owner=owner, name="email.batch")
    with session_scope() as session:
        session.execute(
            update(EmailBatch).where(EmailBatch.id == batch_id).values(job_id=parent.id)
        )
    batch.job_id = parent.id
    return batch


# --- reading ---------------------------------------------------------------------------


def email_to_dict(email: Email) -> dict[str, Any]:
    return {
        "id": email.id,
        "job_id": email.job_id,
        "batch_id": email.batch_id,
        "status": email.status,
        "message_id": email.message_id,
        "from": email.sender,
        "reply_to": email.reply_to,
        "to": email.to,
        "cc": email.cc,
        "bcc": email.bcc,
        "subject": email.subject,
        "text": email.text,
        "html": email.html,
        "template": email.template,
        "headers": email.headers,
        "attachments": email.attachments,
        "send_at": ledger.iso(email.send_at),
        "sent_at": ledger.iso(email.sent_at),
        "attempts": email.attempts,
        "smtp_code": email.smtp_code,
        "smtp_reply": email.smtp_reply,
        "refused": email.refused,
        "skipped": email.skipped,
        "error": email.error,
        "created_at": ledger.iso(email.created_at),
    }


def get_email(session: Session, email_id: str, owner: str | None) -> Email | None:
    email = session.get(Email, email_id)
    if email is None or (owner is not None and email.owner != owner):
        return None
    return email


def get_batch(session: Session, batch_id: str, owner: str | None) -> EmailBatch | None:
    batch = session.get(EmailBatch, batch_id)
    if batch is None or (owner is not None and batch.owner != owner):
        return None
    return batch


def batch_summary(session: Session, batch: EmailBatch) -> dict[str, Any]:
    counts: dict[str, int] = {
        str(status): int(count)
        for status, count in session.execute(
            select(Email.status, func.count())
            .where(Email.batch_id == batch.id)
            .group_by(Email.status)
        ).all()
    }
    bounced = counts.get(EmailStatus.BOUNCED, 0)
    summary = {
        "total": batch.total,
        "sent": counts.get(EmailStatus.SENT, 0),
        "failed": bounced + counts.get(EmailStatus.FAILED, 0),
        "bounced": bounced,
        "suppressed": counts.get(EmailStatus.SUPPRESSED, 0),
        "pending": counts.get(EmailStatus.QUEUED, 0) + counts.get(EmailStatus.SCHEDULED, 0),
    }
    finished = batch.total - summary["pending"]
    status = "completed" if summary["pending"] == 0 else ("sending" if finished else "queued")
    return {
        "id": batch.id,
        "job_id": batch.job_id,
        "status": status,
        "template": batch.template,
        "chunks": batch.chunks,
        "progress": {"current": finished, "total": batch.total},
        "summary": summary,
        "created_at": ledger.iso(batch.created_at),
    }


def batch_recipients(
    session: Session, batch: EmailBatch, *, status: str | None, limit: int, offset: int
) -> list[dict[str, Any]]:
    query = select(Email).where(Email.batch_id == batch.id)
    if status:
        query = query.where(Email.status == status)
    query = query.order_by(Email.created_at, Email.id).limit(limit).offset(offset)
    return [
        {
            "id": email.id,
            "to": email.to[0]["email"] if email.to else None,
            "status": email.status,
            "message_id": email.message_id,
            "smtp_code": email.smtp_code,
            "smtp_reply": email.smtp_reply,
            "sent_at": ledger.iso(email.sent_at),
        }
        for email in session.scalars(query)
    ]


# --- scheduled sends -------------------------------------------------------------------


def dispatch_due(app: Celery, *, horizon: float, limit: int = 500) -> int:
    """Publish scheduled emails due within `horizon` seconds, each with its countdown."""
    cutoff = utcnow() + timedelta(seconds=horizon)
    with session_scope() as session:
        due = session.execute(
            select(Email.id, Email.job_id, Email.owner, Email.send_at)
            .where(Email.status == EmailStatus.SCHEDULED, Email.send_at <= cutoff)
            .order_by(Email.send_at)
            .limit(limit)
        ).all()
    published = 0
    for email_id, job_id, owner, send_at in due:
        with session_scope() as session:
            claimed = session.execute(
                update(Email)
                .where(Email.id == email_id, Email.status == EmailStatus.SCHEDULED)
                .values(status=EmailStatus.QUEUED, updated_at=utcnow())
            )
        if not getattr(claimed, "rowcount", 0):
            continue  # another dispatcher took it
        delay = _send_delay(ledger.as_utc(send_at))
        try:
            app.send_task(
                SEND_TASK,
                kwargs={"email_ids": [email_id]},
                task_id=job_id,
                queue=QUEUE,
                countdown=delay or None,
                headers={HEADER_RECORDED: "1", HEADER_OWNER: owner},
            )
        except Exception:
            with session_scope() as session:
                session.execute(
                    update(Email).where(Email.id == email_id).values(status=EmailStatus.SCHEDULED)
                )
            raise
        published += 1
    return published
