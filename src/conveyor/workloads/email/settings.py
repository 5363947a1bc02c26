"""The email workload's settings: the SMTP server, senders, limits, rates and the mail sink."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator

from conveyor.core.settings import SettingsSection


class EmailSettings(SettingsSection):
    smtp_host: str = Field(
        default="127.0.0.1",
        description="SMTP server for email; `up` starts a local mail sink unless this is set.",
    )
    smtp_port: int = Field(default=1025, ge=1, le=65535, description="Port of the SMTP server.")
    smtp_username: str | None = Field(
        default=None, description="SMTP login; unset: no authentication."
    )
    smtp_password: SecretStr | None = Field(default=None, description="SMTP password.")
    smtp_use_tls: bool = Field(
        default=False, description="STARTTLS on a plain connection (port 587)."
    )
    smtp_use_ssl: bool = Field(
        default=False, description="Implicit TLS (port 465); smtp_use_tls is STARTTLS instead."
    )
    smtp_timeout_seconds: float = Field(
        default=30.0, gt=0, le=300, description="Seconds to wait for the SMTP server."
    )
    smtp_noop_after_seconds: float = Field(
        default=5.0,
        ge=0,
        description="A kept SMTP connection idle longer than this gets a NOOP check before reuse.",
    )
    email_from: str = Field(
        default="Conveyor <noreply@localhost>",
        description="Sender of emails whose request names none.",
    )
    email_message_id_domain: str = Field(
        default="conveyor.localhost",
        description="The right-hand side of every Message-ID (<uuid@domain>).",
    )
    email_templates_dir: Path | None = Field(
        default=None,
        description="Your templates, found before the built-in ones (welcome, layouts, partials).",
    )
    email_max_recipients: int = Field(
        default=50,
        ge=1,
        le=1000,
        description="Most recipients of one email, to, cc and bcc together.",
    )
    email_max_attachments_bytes: int = Field(
        default=10 * 1_048_576,
        ge=1024,
        description="Largest total size of one email's attachments.",
    )
    email_batch_max_recipients: int = Field(
        default=10_000, ge=1, le=100_000, description="Most recipients of one batch."
    )
    email_batch_max_body_bytes: int = Field(
        default=16 * 1_048_576,
        ge=1024,
        description="Largest body of POST /api/v1/emails/batch (10,000 recipients with context).",
    )
    email_batch_chunk_size: int = Field(
        default=100, ge=1, le=1000, description="Recipients per chunk task of a batch."
    )
    email_rate_per_second: float = Field(
        default=0.0,
        ge=0,
        description="Messages per second in all, held across every worker by Redis; 0 = off.",
    )
    email_domain_rate_per_second: float = Field(
        default=0.0, ge=0, description="Messages per second to each recipient domain; 0 = off."
    )
    email_domain_rates: str = Field(
        default="", description="Per-domain overrides of the domain rate: gmail.com=20,yahoo.com=5."
    )
    email_owner_rate_per_second: float = Field(
        default=0.0,
        ge=0,
        description="Messages per second for each owner (API key owner); 0 = off.",
    )
    email_unsubscribe_url: str | None = Field(
        default=None,
        description="Bulk mail's List-Unsubscribe URL ({email} is replaced); a batch may override.",
    )
    email_unsubscribe_mailto: str | None = Field(
        default=None,
        description="Bulk mail's List-Unsubscribe mailto; no URL either: unsubscribe@<domain>.",
    )
    email_schedule_countdown_max: float = Field(
        default=60.0,
        ge=0,
        description="Sends further ahead (seconds) are stored and published by Beat when due.",
    )
    email_dispatch_interval_seconds: float = Field(
        default=15.0,
        ge=1,
        le=3600,
        description="Seconds between Beat's runs publishing scheduled emails that are due.",
    )
    mail_sink: bool = Field(
        default=False,
        description="Serve the mail sink's messages at GET /api/v1/dev/mailbox (`up` sets this).",
    )
    mail_sink_max_messages: int = Field(
        default=1000, ge=10, description="Messages the local mail sink keeps; the oldest go first."
    )

    @field_validator("email_domain_rates")
    @classmethod
    def _domain_rates(cls, value: str) -> str:
        for part in filter(None, (item.strip() for item in value.split(","))):
            domain, _, rate = part.partition("=")
            try:
                ok = bool(domain.strip()) and float(rate) >= 0
            except ValueError:
                ok = False
            if not ok:
                raise ValueError("must be domain=messages-per-second pairs: gmail.com=20,a.org=5")
        return value

    @property
    def email_domain_rate_overrides(self) -> dict[str, float]:
        pairs = (part.partition("=") for part in self.email_domain_rates.split(",") if part.strip())
        return {domain.strip().lower(): float(rate) for domain, _, rate in pairs}
