"""Tables of the email workload: emails, batches, suppressions and uploaded files."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from conveyor.core.models import Base, utcnow


class EmailStatus(StrEnum):
    SCHEDULED = "scheduled"  # send_at in the future; Beat publishes it when due
    QUEUED = "queued"
    SENT = "sent"
    BOUNCED = "bounced"  # the server refused it for good (5xx)
    SUPPRESSED = "suppressed"  # every recipient is on the suppression list
    FAILED = "failed"  # retries exhausted


FINAL_STATUSES = frozenset(
    {EmailStatus.SENT, EmailStatus.BOUNCED, EmailStatus.SUPPRESSED, EmailStatus.FAILED}
)


class Email(Base):
    """One message: rendered at submit time, so the worker only builds and sends it."""

    __tablename__ = "conveyor_emails"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner: Mapped[str] = mapped_column(String(120))
    job_id: Mapped[str | None] = mapped_column(String(64), index=True)
    batch_id: Mapped[str | None] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), default=EmailStatus.QUEUED)
    # Stable across retries and redeliveries: receivers can dedupe on it.
    message_id: Mapped[str] = mapped_column(String(255), unique=True)
    sender: Mapped[str] = mapped_column(String(500))
    reply_to: Mapped[str | None] = mapped_column(String(500))
    to: Mapped[list[Any]] = mapped_column(default=list)
    cc: Mapped[list[Any]] = mapped_column(default=list)
    bcc: Mapped[list[Any]] = mapped_column(default=list)
    subject: Mapped[str] = mapped_column(String(998))
    text: Mapped[str] = mapped_column(Text)
    html: Mapped[str | None] = mapped_column(Text)
    template: Mapped[str | None] = mapped_column(String(64))
    # Extra headers (List-Unsubscribe on bulk mail); names and values already checked.
    headers: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # [{"file_id", "filename", "content_type", "size"}]
    attachments: Mapped[list[Any]] = mapped_column(default=list)
    send_at: Mapped[datetime | None] = mapped_column()
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # Recipients refused at RCPT while the others were accepted: [{"address", "code", "reply"}]
    refused: Mapped[list[Any]] = mapped_column(default=list)
    # Recipients skipped because they are suppressed.
    skipped: Mapped[list[Any]] = mapped_column(default=list)
    smtp_code: Mapped[int | None] = mapped_column(Integer)
    smtp_reply: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column()
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    __table_args__ = (
        Index("ix_conveyor_emails_owner_created", "owner", "created_at"),
        Index("ix_conveyor_emails_batch_status", "batch_id", "status"),
        Index("ix_conveyor_emails_status_send_at", "status", "send_at"),
    )


class EmailBatch(Base):
    """A bulk send: its emails carry its id; its job is the parent of the chunk jobs."""

    __tablename__ = "conveyor_email_batches"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner: Mapped[str] = mapped_column(String(120), index=True)
    job_id: Mapped[str | None] = mapped_column(String(64))
    template: Mapped[str | None] = mapped_column(String(64))
    total: Mapped[int] = mapped_column(Integer)
    chunks: Mapped[int] = mapped_column(Integer)
    send_at: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Suppression(Base):
    """An address that must not be mailed again (a hard bounce, or added by hand).

    Scoped by owner: one tenant's bounces never silence another tenant's mail.
    """

    __tablename__ = "conveyor_email_suppressions"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner: Mapped[str] = mapped_column(String(120))
    address: Mapped[str] = mapped_column(String(320))
    reason: Mapped[str] = mapped_column(String(32))  # bounce, manual
    smtp_code: Mapped[int | None] = mapped_column(Integer)
    smtp_reply: Mapped[str | None] = mapped_column(Text)
    email_id: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (
        UniqueConstraint("owner", "address", name="uq_conveyor_email_suppressions_owner"),
    )


class StoredFile(Base):
    """An uploaded file (an attachment); the bytes live in conveyor.core.storage."""

    __tablename__ = "conveyor_stored_files"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner: Mapped[str] = mapped_column(String(120), index=True)
    filename: Mapped[str] = mapped_column(String(255))
    content_type: Mapped[str] = mapped_column(String(255))
    size: Mapped[int] = mapped_column(Integer)
    storage_key: Mapped[str] = mapped_column(String(512))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
