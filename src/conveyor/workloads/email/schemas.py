"""Request and response bodies of the email API, with the examples /docs shows."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

MAX_CONTEXT_KEYS = 200


class AttachmentRef(BaseModel):
    model_config = ConfigDict(extra="forbid")

    file_id: str = Field(max_length=64, description="An id from POST /api/v1/files.")
    filename: str | None = Field(
        default=None, max_length=255, description="Default: the uploaded file's name."
    )


class EmailRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        populate_by_name=True,
        json_schema_extra={
            "examples": [
                {
                    "to": ["Ada Lovelace <ada@example.com>"],
                    "template": "welcome",
                    "context": {
                        "name": "Ada",
                        "app_name": "Conveyor",
                        "confirm_url": "https://example.com/confirm?token=abc",
                    },
                },
                {
                    "to": ["ada@example.com"],
                    "subject": "Your report is ready",
                    "text": "Download it from your dashboard.",
                    "html": "<p>Download it from your <a href='https://example.com'>dashboard</a>.</p>",
                },
            ]
        },
    )

    to: list[str] = Field(min_length=1, description="'a@example.com' or 'Name <a@example.com>'.")
    cc: list[str] = Field(default_factory=list)
    bcc: list[str] = Field(default_factory=list)
    sender: str | None = Field(
        default=None, alias="from", description="Default: CONVEYOR_EMAIL_FROM."
    )
    reply_to: str | None = None
    template: str | None = Field(default=None, max_length=64)
    context: dict[str, Any] = Field(default_factory=dict)
    subject: str | None = None
    text: str | None = Field(default=None, max_length=1_000_000)
    html: str | None = Field(default=None, max_length=1_000_000)
    attachments: list[AttachmentRef] = Field(default_factory=list, max_length=20)
    send_at: datetime | None = Field(
        default=None, description="ISO 8601 with a time zone; absent or past: send now."
    )


class BatchRecipient(BaseModel):
    model_config = ConfigDict(extra="forbid")

    to: str
    context: dict[str, Any] = Field(default_factory=dict)


class BatchRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        populate_by_name=True,
        json_schema_extra={
            "examples": [
                {
                    "template": "welcome",
                    "context": {"app_name": "Conveyor", "confirm_url": "https://example.com/c"},
                    "recipients": [
                        {"to": "ada@example.com", "context": {"name": "Ada"}},
                        {"to": "Alan <alan@example.org>", "context": {"name": "Alan"}},
                    ],
                }
            ]
        },
    )

    recipients: list[BatchRecipient] = Field(min_length=1)
    template: str | None = Field(default=None, max_length=64)
    context: dict[str, Any] = Field(
        default_factory=dict, description="Shared context; each recipient's own wins."
    )
    subject: str | None = None
    text: str | None = Field(default=None, max_length=1_000_000)
    html: str | None = Field(default=None, max_length=1_000_000)
    sender: str | None = Field(default=None, alias="from")
    reply_to: str | None = None
    unsubscribe_url: str | None = Field(
        default=None,
        max_length=2000,
        description="List-Unsubscribe URL; '{email}' becomes the recipient. "
        "Default: CONVEYOR_EMAIL_UNSUBSCRIBE_URL.",
    )


class EmailAccepted(BaseModel):
    id: str
    job_id: str
    status: str
    url: str


class BatchAccepted(BaseModel):
    id: str
    job_id: str
    status: str
    total: int
    chunks: int
    url: str


class SuppressionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: str = Field(max_length=320)
    reason: str = Field(default="manual", max_length=32)


class SuppressionOut(BaseModel):
    id: str
    email: str
    reason: str
    smtp_code: int | None
    smtp_reply: str | None
    email_id: str | None
    created_at: str | None


class FileOut(BaseModel):
    id: str
    filename: str
    content_type: str
    size: int
