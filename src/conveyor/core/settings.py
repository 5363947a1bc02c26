"""Configuration: every setting comes from the environment (prefix CONVEYOR_) or `.env`."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal, Self
from urllib.parse import urlsplit

from pydantic import (
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from conveyor.core import runtime
from conveyor.core.runtime import Runtime

WORKLOAD_QUEUES = ("email", "images", "payments", "reports", "scraping")
QUEUES = (*WORKLOAD_QUEUES, "webhooks", "default")


class SettingsError(Exception):
    """A configuration problem, phrased so a person can fix it."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="CONVEYOR_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
    )

    data_dir: Path = Field(
        default=Path(".conveyor"),
        description="Local state: SQLite ledger, embedded Redis, Beat schedule, runtime file.",
    )

    redis_url: str | None = Field(
        default=None,
        description="Redis for progress and cancel flags; unset: that of a running `conveyor up`.",
    )
    broker_url: str | None = Field(
        default=None,
        description="Celery broker (amqp:// for RabbitMQ works too); unset: the Redis URL.",
    )
    result_backend_url: str | None = Field(
        default=None, description="Celery results (chords need them); unset: the Redis URL."
    )
    database_url: str | None = Field(
        default=None,
        description="Ledger URL, sqlite:/// or postgresql://; unset: `up`'s or SQLite in data_dir.",
    )

    api_host: str = Field(default="127.0.0.1", description="Address the API listens on.")
    api_port: int = Field(default=8000, ge=1, le=65535, description="Port the API listens on.")
    public_base_url: str | None = Field(
        default=None,
        description="Origin of URLs in answers (https://jobs.example.com); unset: relative URLs.",
    )
    max_body_bytes: int = Field(
        default=1_048_576,
        ge=1024,
        description="Largest request body the API reads; larger ones get 413 before any parsing.",
    )
    bootstrap_api_key: SecretStr | None = Field(
        default=None,
        description="An admin API key that `up` and `api` create if it does not exist yet.",
    )

    task_soft_time_limit: int = Field(
        default=300,
        ge=1,
        description="Seconds until SoftTimeLimitExceeded lets a task clean up; tasks may override.",
    )
    task_time_limit: int = Field(
        default=360,
        ge=1,
        description="Seconds until a task's process is killed; tasks may override.",
    )
    visibility_timeout: int = Field(
        default=3900,
        ge=1,
        description="Seconds until Redis redelivers an unacked message; above any task's run time.",
    )
    unacked_restore_interval: int = Field(
        default=60,
        ge=1,
        description="Seconds between a worker's sweeps for messages a dead worker held.",
    )
    result_expires: int = Field(
        default=86_400,
        ge=60,
        description="Seconds Celery results stay in the backend; the ledger keeps the record.",
    )
    worker_concurrency: int | None = Field(
        default=None, ge=1, description="Prefork processes per worker; unset: the CPU count."
    )
    worker_prefetch_multiplier: int = Field(
        default=1,
        ge=1,
        description="Messages a worker process reserves ahead; 1: no job waits behind a busy one.",
    )
    # Off by default: they cost about half a worker's throughput on short tasks, and
    # Flower switches them on in running workers itself.
    task_events: bool = Field(
        default=False,
        description="Send Celery task events (Flower, `celery events`) from the start.",
    )
    # High: recycling stalls a pool process for a moment; the memory cap catches real leaks.
    worker_max_tasks_per_child: int = Field(
        default=10_000, ge=1, description="Tasks after which a worker process is replaced."
    )
    worker_max_memory_per_child_kib: int = Field(
        default=512_000,
        ge=10_000,
        description="Memory (KiB) above which a worker process is replaced after its task.",
    )
    redis_timeout_seconds: float = Field(
        default=2.0,
        gt=0,
        le=60,
        description=(
            "Socket timeout of every Redis call outside a worker's queue polling: a frozen "
            "Redis fails a request (503) in this long instead of hanging it."
        ),
    )
    worker_heartbeat_seconds: float = Field(
        default=10.0,
        gt=0,
        le=300,
        description="How often each worker writes its heartbeat (alive, and the jobs it holds).",
    )
    worker_lost_after_seconds: float = Field(
        default=60.0,
        ge=2,
        description=(
            "A worker silent this long is gone: the reconciler hands its unacknowledged jobs "
            "out again (instead of after the visibility timeout)."
        ),
    )
    reconcile_interval_seconds: float = Field(
        default=30.0,
        ge=1,
        le=3600,
        description="How often Beat runs the reconciler that finds and heals lost jobs.",
    )
    reconcile_grace_seconds: float = Field(
        default=120.0,
        ge=1,
        description=(
            "An active job unchanged this long, that no live worker holds and no queue "
            "contains, is lost: settled from its stored result, published again or "
            "dead-lettered."
        ),
    )
    reconcile_scan_limit: int = Field(
        default=10_000,
        ge=100,
        description=(
            "Queues longer than this are not searched for lost queued jobs (their backlog "
            "is not lost, only slow)."
        ),
    )

    retry_max_attempts: int = Field(
        default=5, ge=0, description="Retries after the first try; tasks may override."
    )
    retry_backoff_base: float = Field(
        default=2.0,
        gt=0,
        description="Base of the exponential wait between retries (seconds); tasks may override.",
    )
    retry_backoff_max: float = Field(
        default=600.0,
        gt=0,
        description="Longest wait between retries (seconds); must be below the visibility timeout.",
    )

    db_pool_size: int = Field(
        default=5, ge=1, description="Database connections each process keeps open."
    )
    db_pool_recycle: int = Field(
        default=1800,
        ge=30,
        description="Seconds after which a pooled database connection is replaced.",
    )

    dead_letter_retention_days: int = Field(
        default=30, ge=1, description="Cleanup deletes dead letters older than this (days)."
    )
    job_retention_days: int = Field(
        default=14,
        ge=1,
        description="Cleanup deletes succeeded, failed and cancelled jobs older than this (days).",
    )
    webhook_delivery_retention_days: int = Field(
        default=14,
        ge=1,
        description="Cleanup deletes webhook deliveries older than this (days), held ones too.",
    )
    cleanup_batch_size: int = Field(
        default=1000,
        ge=10,
        le=100_000,
        description="Rows cleanup deletes per statement; small batches never hold a lock for long.",
    )

    # DESIGN: 24 h.
    idempotency_ttl_seconds: int = Field(
        default=86_400,
        ge=60,
        description="Seconds an Idempotency-Key and its response are remembered.",
    )
    api_rate_limit_per_minute: int = Field(
        default=600,
        ge=0,
        description="Requests per minute per API key (429 with Retry-After beyond); 0 = off.",
    )
    api_auth_failures_per_minute: int = Field(
        default=20,
        ge=0,
        description="Failed API-key logins per client address a minute; then 429 for it; 0 = off.",
    )
    sse_max_streams_per_key: int = Field(
        default=20,
        ge=0,
        description="Open job event streams (SSE) per API key; 429 beyond; 0 = off.",
    )

    allow_private_networks: bool = Field(
        default=False,
        description="Let webhooks and image fetches reach private addresses (not cloud metadata).",
    )
    webhook_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        le=120,
        description="Seconds a webhook delivery waits for the endpoint's answer.",
    )
    # Like Svix: a window of time, not a count, so a burst of traffic during a short outage
    # cannot disable an endpoint.
    webhook_disable_after_seconds: float = Field(
        default=5 * 86_400,
        ge=1,
        description="Seconds of failed deliveries, none succeeding, that disable an endpoint.",
    )

    # webhooks
    # About a day in all, like Svix.
    webhook_retry_schedule: str = Field(
        default="5,300,1800,7200,18000,36000,36000",
        description="Seconds before each retry of a failed delivery, comma-separated.",
    )
    webhook_dispatch_interval_seconds: float = Field(
        default=30.0,
        ge=1,
        le=3600,
        description="Seconds between Beat's runs publishing due delivery retries.",
    )

    @field_validator("webhook_retry_schedule")
    @classmethod
    def _retry_schedule(cls, value: str) -> str:
        parts = [part.strip() for part in value.split(",") if part.strip()]
        try:
            delays = [float(part) for part in parts]
        except ValueError:
            raise ValueError("must be comma-separated seconds, e.g. 5,300,1800") from None
        if any(delay < 0 or delay > 7 * 86_400 for delay in delays) or len(delays) > 30:
            raise ValueError("at most 30 delays, each between 0 and 604800 seconds")
        return ",".join(parts)

    @property
    def webhook_retry_delays(self) -> tuple[float, ...]:
        return tuple(float(part) for part in self.webhook_retry_schedule.split(",") if part)

    # end webhooks

    queue_wait_threshold_seconds: float = Field(
        default=0.0,
        ge=0,
        description="Log queue.wait_exceeded when a job waited longer (seconds); 0 = off.",
    )
    metrics_dir: Path | None = Field(
        default=None,
        description="Where prefork processes share Prometheus metrics; unset: data_dir/metrics.",
    )
    worker_metrics_port: int = Field(
        default=0,
        ge=0,
        le=65535,
        description="Port of a worker's own /metrics (every pool process of its machine); 0 = off.",
    )

    # storage
    storage_backend: Literal["local", "s3"] = Field(
        default="local",
        description="Where files (attachments, uploads, image variants) live: local or s3.",
    )
    storage_dir: Path | None = Field(
        default=None, description="Directory of the local backend; unset: data_dir/files."
    )
    s3_bucket: str | None = Field(default=None, description="Bucket of the s3 backend.")
    s3_prefix: str = Field(default="", description="Prefix of every object key in the bucket.")
    s3_endpoint_url: str | None = Field(
        default=None, description="An S3-compatible server (MinIO, Ceph, R2...); unset: AWS itself."
    )
    s3_region: str | None = Field(
        default=None, description="Region of the bucket; unset: boto3's default."
    )
    s3_access_key_id: SecretStr | None = Field(
        default=None,
        description="S3 access key id; unset: boto3 finds credentials (env, role, ~/.aws).",
    )
    s3_secret_access_key: SecretStr | None = Field(
        default=None, description="S3 secret access key; unset: boto3 finds credentials itself."
    )
    s3_public_url: str | None = Field(
        default=None,
        description="Base URL the objects are public under (a CDN); unset: presigned GET URLs.",
    )
    s3_presign_seconds: int = Field(
        default=3600, ge=60, le=7 * 86_400, description="Seconds a presigned GET URL stays valid."
    )
    # end storage

    # email
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
    email_batch_max_body_bytes: int = Field(
        default=16 * 1_048_576,
        ge=1024,
        description="Largest body of POST /api/v1/emails/batch (10,000 recipients with context).",
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
    email_max_recipients: int = Field(
        default=50,
        ge=1,
        le=1000,
        description="Most recipients of one email, to, cc and bcc together.",
    )
    email_batch_max_recipients: int = Field(
        default=10_000, ge=1, le=100_000, description="Most recipients of one batch."
    )
    email_batch_chunk_size: int = Field(
        default=100, ge=1, le=1000, description="Recipients per chunk task of a batch."
    )
    email_max_attachments_bytes: int = Field(
        default=10 * 1_048_576,
        ge=1024,
        description="Largest total size of one email's attachments.",
    )
    file_max_upload_bytes: int = Field(
        default=10 * 1_048_576, ge=1024, description="Largest file POST /api/v1/files accepts."
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

    # end email

    # payments
    payments_gateway: Literal["sandbox", "stripe"] = Field(
        default="sandbox",
        description="Which gateway moves the money: sandbox (local, `up` starts it) or stripe.",
    )
    # Operator configuration, like the database URL: loopback is fine here.
    payments_gateway_url: str = Field(
        default="http://127.0.0.1:8010", description="URL of the sandbox gateway."
    )
    payments_gateway_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        le=120,
        description="Seconds a gateway call waits; an unanswered charge is checked, never resent.",
    )
    payments_gateway_webhook_secret: SecretStr | None = Field(
        default=None,
        description="Shared with the gateway: signs its events to /api/v1/payments/gateway-events.",
    )
    stripe_api_key: SecretStr | None = Field(
        default=None, description="Stripe secret key; needed when the gateway is stripe."
    )
    stripe_api_base: str | None = Field(
        default=None,
        description="Another Stripe API address (a recording server in tests); unset: Stripe.",
    )
    payments_retry_max: int = Field(
        default=8,
        ge=0,
        le=50,
        description="Retries of an unanswered charge or refund before it goes to requires_review.",
    )
    payments_backoff_max_seconds: float = Field(
        default=60.0,
        gt=0,
        description="Longest wait between payment retries (seconds), within retry_backoff_max.",
    )
    payments_reconcile_interval_seconds: float = Field(
        default=60.0,
        ge=1,
        le=86_400,
        description="Seconds between Beat's sweeps for stuck payments and refunds.",
    )
    payments_stuck_after_seconds: float = Field(
        default=900.0,
        ge=1,
        description="Seconds in processing (or unstarted) after which the sweep settles a payment.",
    )
    sandbox_gateway_host: str = Field(
        default="127.0.0.1",
        description="Address the sandbox gateway (started by `conveyor up`) listens on.",
    )
    sandbox_gateway_port: int = Field(
        default=8010, ge=1, le=65535, description="Port the sandbox gateway listens on."
    )
    sandbox_latency_ms: float = Field(
        default=0.0,
        ge=0,
        le=60_000,
        description="Milliseconds the sandbox gateway waits before each answer.",
    )
    sandbox_error_rate: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="Share of sandbox answers that are 5xx: half before charging, half after.",
    )
    # Longer than the client waits (payments_gateway_timeout_seconds).
    sandbox_slow_seconds: float = Field(
        default=15.0,
        ge=0,
        le=600,
        description="How late the sandbox's times-out test card answers (after charging).",
    )
    sandbox_webhook_url: str | None = Field(
        default=None, description="Where the sandbox posts its signed events; unset: it posts none."
    )
    # end payments

    # images
    image_max_upload_bytes: int = Field(
        default=20 * 1_048_576,
        ge=1024,
        description="Largest image upload (the multipart body may exceed it by a few headers).",
    )
    # Checked from the header, before any pixel is decoded (decompression bombs).
    image_max_width: int = Field(
        default=12_000, ge=16, description="Widest image accepted (pixels)."
    )
    image_max_height: int = Field(
        default=12_000, ge=16, description="Tallest image accepted (pixels)."
    )
    image_max_pixels: int = Field(
        default=50_000_000,
        ge=256,
        description="Most pixels (width times height) of an image accepted.",
    )
    image_presets: str = Field(
        default="",
        description='Presets as JSON {"name": {"variants": [...], ...}}; unset: the built-in ones.',
    )
    image_jpeg_quality: int = Field(default=82, ge=1, le=100, description="JPEG quality, 1 to 100.")
    image_webp_quality: int = Field(default=80, ge=1, le=100, description="WebP quality, 1 to 100.")
    image_webp_effort: int = Field(
        default=2,
        ge=0,
        le=6,
        description="WebP encoding effort, 0 to 6: higher is slower and smaller.",
    )
    image_avif_quality: int = Field(default=50, ge=1, le=100, description="AVIF quality, 1 to 100.")
    # AV1 encoding is the slowest step by far: effort 0 encodes a 1600 px image about 6x
    # faster than 2 for files about 7% larger (docs/images.md has the figures).
    image_avif_effort: int = Field(
        default=0,
        ge=0,
        le=9,
        description="AVIF encoding effort, 0 to 9: higher is slower and smaller.",
    )
    # One deadline for the whole fetch, not per read: a server trickling bytes is cut off too.
    image_fetch_timeout_seconds: float = Field(
        default=20.0,
        gt=0,
        le=300,
        description="Seconds a worker may spend fetching an image given by URL, all in all.",
    )
    image_vips_concurrency: int = Field(
        default=1,
        ge=1,
        le=64,
        description="libvips threads per process; 1 lets processes, not threads, share the cores.",
    )
    image_tune_malloc: bool = Field(
        default=True,
        description="Fewer malloc arenas, mmap for large blocks, where images are made (glibc).",
    )

    @field_validator("image_presets")
    @classmethod
    def _presets_parse(cls, value: str) -> str:
        from conveyor.workloads.images.presets import parse_presets

        parse_presets(value)
        return value

    # end images

    task_modules: str = Field(
        default="",
        description="Task modules for workers to load, comma-separated: myapp.tasks,billing.jobs.",
    )

    log_level: str = Field(default="INFO", description="DEBUG, INFO, WARNING, ERROR or CRITICAL.")
    log_json: bool = Field(
        default=True,
        description="One JSON object per log line; false: lines for people (`up` sets false).",
    )

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str | None) -> str | None:
        if value is None:
            return None
        scheme = value.split("://", 1)[0] if "://" in value else ""
        if not scheme.startswith(("sqlite", "postgresql", "postgres")):
            raise ValueError(
                "must start with sqlite:/// or postgresql:// (got "
                f"{scheme + '://' if scheme else 'no scheme'})"
            )
        return value

    @field_validator("redis_url", "broker_url", "result_backend_url")
    @classmethod
    def _known_broker(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.startswith(("redis://", "rediss://", "amqp://", "amqps://", "pyamqp://")):
            raise ValueError("must be a redis://, rediss:// or amqp:// URL")
        return value

    @field_validator("public_base_url")
    @classmethod
    def _public_origin(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        parsed = urlsplit(value.strip())
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError("must be an http(s) URL like https://jobs.example.com")
        if parsed.query or parsed.fragment or "@" in parsed.netloc:
            raise ValueError("must be a plain origin and path, without user, query or fragment")
        return f"{parsed.scheme}://{parsed.netloc}{parsed.path.rstrip('/')}"

    @field_validator("bootstrap_api_key")
    @classmethod
    def _key_format(cls, value: SecretStr | None) -> SecretStr | None:
        from conveyor.core.api_keys import KEY_FORMAT_HELP, split_key

        if value is not None and split_key(value.get_secret_value()) is None:
            raise ValueError(KEY_FORMAT_HELP)
        return value

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError("must be DEBUG, INFO, WARNING, ERROR or CRITICAL")
        return level

    @model_validator(mode="after")
    def _limits_are_consistent(self) -> Self:
        if self.task_soft_time_limit >= self.task_time_limit:
            raise ValueError(
                "CONVEYOR_TASK_SOFT_TIME_LIMIT must be below CONVEYOR_TASK_TIME_LIMIT "
                "so a task can clean up before it is killed"
            )
        if self.visibility_timeout <= self.task_time_limit:
            raise ValueError(
                "CONVEYOR_VISIBILITY_TIMEOUT must exceed CONVEYOR_TASK_TIME_LIMIT, "
                "or Redis hands a running job to a second worker"
            )
        if self.worker_lost_after_seconds <= 2 * self.worker_heartbeat_seconds:
            raise ValueError(
                "CONVEYOR_WORKER_LOST_AFTER_SECONDS must exceed twice "
                "CONVEYOR_WORKER_HEARTBEAT_SECONDS, or a live worker counts as gone"
            )
        if self.retry_backoff_max >= self.visibility_timeout:
            raise ValueError(
                "CONVEYOR_RETRY_BACKOFF_MAX must be below CONVEYOR_VISIBILITY_TIMEOUT: a retry "
                "waiting longer than that is handed to a second worker"
            )
        return self

    @property
    def extra_task_modules(self) -> list[str]:
        return [name.strip() for name in self.task_modules.split(",") if name.strip()]

    # The running `conveyor up` whose runtime file supplied the URLs not set here, if any.
    _runtime: Runtime | None = PrivateAttr(default=None)
    _from_runtime: frozenset[str] = PrivateAttr(default=frozenset())

    @property
    def runtime(self) -> Runtime | None:
        return self._runtime

    def nothing_running(self, setting: str) -> str:
        where = self.data_dir.resolve()
        return (
            f"no Conveyor running here (nothing in {where}); start one with `./dev up` or "
            f"`conveyor up`, or set CONVEYOR_DATA_DIR to a running one's data directory, or "
            f"{setting}"
        )

    def source_of(self, field: str) -> str:
        """Where a setting's value came from, for messages that say which system is used."""
        if field in self._from_runtime and self._runtime is not None:
            return f"found from `conveyor up`, pid {self._runtime.pid}"
        if field in self.model_fields_set:
            return f"CONVEYOR_{field.upper()}"
        return "default"

    @property
    def redis(self) -> str:
        if self.redis_url is None:
            # Never a silent default: a guessed Redis is how jobs went where no worker looks.
            raise SettingsError(self.nothing_running("CONVEYOR_REDIS_URL"))
        return self.redis_url

    @property
    def broker(self) -> str:
        return self.broker_url or self.redis

    @property
    def result_backend(self) -> str:
        return self.result_backend_url or self.redis

    @property
    def database(self) -> str:
        """The SQLAlchemy URL, with the psycopg 3 driver chosen for PostgreSQL."""
        url = self.database_url or f"sqlite:///{(self.data_dir / 'conveyor.db').as_posix()}"
        for prefix in ("postgresql://", "postgres://"):
            if url.startswith(prefix):
                return "postgresql+psycopg://" + url[len(prefix) :]
        return url


def describe_validation_error(error: ValidationError) -> str:
    """One line per bad setting, named as the environment variable a person would set."""
    lines = []
    for item in error.errors():
        loc = "_".join(str(part) for part in item["loc"]).upper()
        name = f"CONVEYOR_{loc}" if loc else "configuration"
        message = str(item["msg"]).removeprefix("Value error, ")
        lines.append(f"{name}: {message}")
    return "; ".join(lines)


def load_settings() -> Settings:
    try:
        settings = Settings()
    except ValidationError as exc:
        raise SettingsError(f"invalid configuration: {describe_validation_error(exc)}") from None
    return with_runtime(settings)


def with_runtime(settings: Settings) -> Settings:
    """Fill the URLs not set by CONVEYOR_* from the `conveyor up` running in data_dir."""
    found = runtime.read(settings.data_dir)
    if found is None:
        return settings
    update = {}
    if settings.redis_url is None:
        update["redis_url"] = found.redis_url
    if settings.database_url is None:
        update["database_url"] = found.database_url
    resolved = settings.model_copy(update=update)
    resolved._runtime = found
    resolved._from_runtime = frozenset(update)
    return resolved


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
