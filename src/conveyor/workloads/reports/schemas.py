"""Request and response bodies of the reports API."""

from __future__ import annotations

from datetime import date
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Kind = Literal["payments", "jobs", "emails", "images"]
FileFormat = Literal["csv", "xlsx", "pdf"]


class ReportRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"kind": "payments", "start": "2026-11-01", "end": "2026-11-30", "format": "xlsx"}
            ]
        },
    )

    kind: Kind
    start: date = Field(description="First day, inclusive.")
    end: date = Field(description="Last day, inclusive.")
    format: FileFormat
    timezone: str = Field(
        default="UTC", max_length=64, description="IANA zone the days are counted in."
    )
    email_to: list[str] = Field(
        default_factory=list, max_length=50, description="Mail the finished report here."
    )


class ReportAccepted(BaseModel):
    id: str
    job_id: str
    status: str
    url: str


class ReportOut(BaseModel):
    id: str
    job_id: str | None
    kind: str
    start: date
    end: date
    timezone: str
    format: str
    status: str
    rows: int | None
    size: int | None
    error: str | None
    email_to: list[str]
    created_at: str | None
    finished_at: str | None
    download_url: str | None = None


class ReportList(BaseModel):
    items: list[ReportOut]
    next_offset: int | None
