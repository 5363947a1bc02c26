"""The reports workload's settings: period limits, chunk size and how reports are emailed."""

from __future__ import annotations

from pydantic import Field

from conveyor.core.settings import SettingsSection


class ReportsSettings(SettingsSection):
    report_max_days: int = Field(
        default=366, ge=1, le=3660, description="Longest period of one report, in days."
    )
    report_chunk_rows: int = Field(
        default=5000,
        ge=1,
        le=100_000,
        description="Rows read from the database (and written) per chunk; progress per chunk.",
    )
    report_email_attach_max_bytes: int = Field(
        default=5 * 1_048_576,
        ge=1024,
        description="An emailed report up to this size is attached; a larger one is a link.",
    )
    report_pdf_max_rows: int = Field(
        default=500,
        ge=10,
        le=10_000,
        description="Summary rows a PDF shows; the CSV and XLSX have every row.",
    )
