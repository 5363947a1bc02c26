"""Configuration: every setting comes from the environment (prefix CONVEYOR_) or `.env`."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal, Self

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
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

    # Where Conveyor keeps local state (embedded Redis data, SQLite file, Beat schedule).
    data_dir: Path = Path(".conveyor")

    redis_url: str | None = Field(
        default=None, description="Redis for hot state; unset means local Redis (or embedded)."
    )
    broker_url: str | None = Field(default=None, description="Defaults to the Redis URL.")
    result_backend_url: str | None = Field(default=None, description="Defaults to the Redis URL.")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; unset means SQLite under data_dir."
    )

    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8000, ge=1, le=65535)
    # Largest request body the API reads; larger ones get a 413 before any parsing.
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    bootstrap_api_key: SecretStr | None = None

    # Time limits apply to every task unless the task sets its own.
    task_soft_time_limit: int = Field(default=300, ge=1)
    task_time_limit: int = Field(default=360, ge=1)
    # Redis redelivers unacknowledged messages after this; it must exceed any task's run time.
    visibility_timeout: int = Field(default=3900, ge=1)
    # How often a worker looks for messages whose visibility timeout ran out (seconds).
    unacked_restore_interval: int = Field(default=60, ge=1)
    result_expires: int = Field(default=86_400, ge=60)
    worker_concurrency: int | None = Field(default=None, ge=1)
    worker_prefetch_multiplier: int = Field(default=1, ge=1)
    # Celery task events (Flower, `celery events`). Off by default: they cost about half a
    # worker's throughput on short tasks. Flower switches them on in running workers itself.
    task_events: bool = False
    # High: recycling stalls a pool process for a moment; the memory cap catches real leaks.
    worker_max_tasks_per_child: int = Field(default=10_000, ge=1)
    worker_max_memory_per_child_kib: int = Field(default=512_000, ge=10_000)

    retry_max_attempts: int = Field(default=5, ge=0, description="Retries after the first try.")
    retry_backoff_base: float = Field(default=2.0, gt=0)
    retry_backoff_max: float = Field(default=600.0, gt=0)

    db_pool_size: int = Field(default=5, ge=1)
    db_pool_recycle: int = Field(default=1800, ge=30)

    dead_letter_retention_days: int = Field(default=30, ge=1)
    # Finished jobs (succeeded, cancelled) are pruned from the ledger after this.
    job_retention_days: int = Field(default=14, ge=1)
    webhook_delivery_retention_days: int = Field(default=14, ge=1)
    # Rows deleted per statement by cleanup: small batches never hold a lock for long.
    cleanup_batch_size: int = Field(default=1000, ge=10, le=100_000)

    # Idempotency-Key records are kept this long (DESIGN: 24 h).
    idempotency_ttl_seconds: int = Field(default=86_400, ge=60)
    # Requests per minute per API key; 0 turns the limit off.
    api_rate_limit_per_minute: int = Field(default=600, ge=0)

    # Outgoing HTTP (webhooks, fetching): private, loopback and metadata addresses are refused.
    allow_private_networks: bool = False
    webhook_timeout_seconds: float = Field(default=10.0, gt=0, le=120)
    # Consecutive failed attempts after which an endpoint is disabled.
    webhook_disable_after_failures: int = Field(default=50, ge=1)

    # webhooks
    # Seconds to wait before each retry of a failed delivery (about a day in all, like Svix).
    webhook_retry_schedule: str = "5,300,1800,7200,18000,36000,36000"
    # How often Beat publishes due deliveries (retries too long to wait in a worker).
    webhook_dispatch_interval_seconds: float = Field(default=30.0, ge=1, le=3600)

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

    # Raise a queue.wait_exceeded event when a job waited longer than this (seconds; 0 = off).
    queue_wait_threshold_seconds: float = Field(default=0.0, ge=0)
    # Where prefork worker processes share Prometheus metrics; default: data_dir/metrics.
    metrics_dir: Path | None = None
    # A worker's own /metrics endpoint (every pool process of its machine); 0 = off.
    worker_metrics_port: int = Field(default=0, ge=0, le=65535)

    # storage
    # Files (attachments, uploads, image variants): "local" keeps them under storage_dir,
    # "s3" in an S3 bucket (AWS or any S3-compatible server: MinIO, Ceph, R2...).
    storage_backend: Literal["local", "s3"] = "local"
    storage_dir: Path | None = Field(default=None, description="Default: data_dir/files.")
    s3_bucket: str | None = None
    s3_prefix: str = ""
    s3_endpoint_url: str | None = Field(default=None, description="Unset means AWS itself.")
    s3_region: str | None = None
    # Unset: boto3 finds credentials itself (environment, instance role, ~/.aws).
    s3_access_key_id: SecretStr | None = None
    s3_secret_access_key: SecretStr | None = None
    # Base URL the objects are public under (a CDN); unset means presigned GET URLs.
    s3_public_url: str | None = None
    s3_presign_seconds: int = Field(default=3600, ge=60, le=7 * 86_400)
    # end storage

    # email
    smtp_host: str = "127.0.0.1"
    smtp_port: int = Field(default=1025, ge=1, le=65535)
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_use_tls: bool = False
    # Largest body POST /api/v1/emails/batch accepts (10,000 recipients with their context).
    email_batch_max_body_bytes: int = Field(default=16 * 1_048_576, ge=1024)
    # Implicit TLS (port 465); smtp_use_tls is STARTTLS on a plain connection (587).
    smtp_use_ssl: bool = False
    smtp_timeout_seconds: float = Field(default=30.0, gt=0, le=300)
    # A kept-open connection idle longer than this is checked with NOOP before reuse.
    smtp_noop_after_seconds: float = Field(default=5.0, ge=0)
    email_from: str = "Conveyor <noreply@localhost>"
    # The right-hand side of every Message-ID (<uuid@domain>).
    email_message_id_domain: str = "conveyor.localhost"
    # Your templates; looked up before the built-in ones (welcome, layouts, partials).
    email_templates_dir: Path | None = None
    # Rate limits in messages per second (0 = off), held across every worker by Redis.
    email_rate_per_second: float = Field(default=0.0, ge=0)
    email_domain_rate_per_second: float = Field(default=0.0, ge=0)
    # Per-domain overrides of the above: "gmail.com=20,yahoo.com=5".
    email_domain_rates: str = ""
    email_owner_rate_per_second: float = Field(default=0.0, ge=0)
    email_max_recipients: int = Field(default=50, ge=1, le=1000)
    email_batch_max_recipients: int = Field(default=10_000, ge=1, le=100_000)
    # Recipients per chunk task of a batch.
    email_batch_chunk_size: int = Field(default=100, ge=1, le=1000)
    email_max_attachments_bytes: int = Field(default=10 * 1_048_576, ge=1024)
    file_max_upload_bytes: int = Field(default=10 * 1_048_576, ge=1024)
    # List-Unsubscribe on bulk mail: a URL ({email} is replaced) and/or a mailto address.
    email_unsubscribe_url: str | None = None
    email_unsubscribe_mailto: str | None = None
    # Sends further ahead than this are stored and published by Beat when due (seconds).
    email_schedule_countdown_max: float = Field(default=60.0, ge=0)
    email_dispatch_interval_seconds: float = Field(default=15.0, ge=1, le=3600)
    # The local mail sink (`conveyor up`): GET /api/v1/dev/mailbox works only when true.
    mail_sink: bool = False
    mail_sink_max_messages: int = Field(default=1000, ge=10)

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
    # Which gateway moves the money: the local sandbox (`conveyor up` starts it) or Stripe.
    payments_gateway: Literal["sandbox", "stripe"] = "sandbox"
    # Operator configuration, like the database URL: loopback is fine here.
    payments_gateway_url: str = "http://127.0.0.1:8010"
    # A charge unanswered after this is asked about by status check, never sent blind again.
    payments_gateway_timeout_seconds: float = Field(default=10.0, gt=0, le=120)
    # Shared with the gateway: signs the events it posts to /api/v1/payments/gateway-events.
    payments_gateway_webhook_secret: SecretStr | None = None
    stripe_api_key: SecretStr | None = None
    # Only for pointing the Stripe client somewhere else (a recording server in tests).
    stripe_api_base: str | None = None
    # Retries of a charge or refund the gateway did not answer; then `requires_review`.
    payments_retry_max: int = Field(default=8, ge=0, le=50)
    payments_backoff_max_seconds: float = Field(default=60.0, gt=0)
    # Beat looks for payments stuck in `processing` this often, older than the threshold.
    payments_reconcile_interval_seconds: float = Field(default=60.0, ge=1, le=86_400)
    payments_stuck_after_seconds: float = Field(default=900.0, ge=1)
    # The sandbox gateway's own settings (`conveyor sandbox-gateway`, started by `up`).
    sandbox_gateway_host: str = "127.0.0.1"
    sandbox_gateway_port: int = Field(default=8010, ge=1, le=65535)
    sandbox_latency_ms: float = Field(default=0.0, ge=0, le=60_000)
    # Share of requests answered 5xx: half before the charge is recorded, half after.
    sandbox_error_rate: float = Field(default=0.0, ge=0, le=1)
    # How late the "times out" test card answers (after charging): longer than the client waits.
    sandbox_slow_seconds: float = Field(default=15.0, ge=0, le=600)
    # Where the sandbox posts its signed events; unset: it posts none.
    sandbox_webhook_url: str | None = None
    # end payments

    # images
    # Largest image upload (the multipart body may exceed it by a few headers).
    image_max_upload_bytes: int = Field(default=20 * 1_048_576, ge=1024)
    # Checked from the header, before any pixel is decoded (decompression bombs).
    image_max_width: int = Field(default=12_000, ge=16)
    image_max_height: int = Field(default=12_000, ge=16)
    image_max_pixels: int = Field(default=50_000_000, ge=256)
    # Presets as JSON, {"name": {"variants": [...], "formats": [...], ...}}; unset: built-in.
    image_presets: str = ""
    image_jpeg_quality: int = Field(default=82, ge=1, le=100)
    image_webp_quality: int = Field(default=80, ge=1, le=100)
    image_webp_effort: int = Field(default=2, ge=0, le=6)
    image_avif_quality: int = Field(default=50, ge=1, le=100)
    # AV1 encoding is the slowest step by far: effort 0 encodes a 1600 px image about 6x
    # faster than 2 for files about 7% larger (docs/images.md has the figures).
    image_avif_effort: int = Field(default=0, ge=0, le=9)
    image_fetch_timeout_seconds: float = Field(default=20.0, gt=0, le=300)
    # Threads libvips uses per worker process; 1 lets processes, not threads, share cores.
    image_vips_concurrency: int = Field(default=1, ge=1, le=64)
    # Fewer malloc arenas and mmap for large blocks in processes that make images (glibc).
    image_tune_malloc: bool = True

    @field_validator("image_presets")
    @classmethod
    def _presets_parse(cls, value: str) -> str:
        from conveyor.workloads.images.presets import parse_presets

        parse_presets(value)
        return value

    # end images

    # Your own task modules for workers to load, comma-separated: "myapp.tasks,billing.jobs".
    task_modules: str = ""

    log_level: str = "INFO"
    log_json: bool = True

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
        if self.retry_backoff_max >= self.visibility_timeout:
            raise ValueError(
                "CONVEYOR_RETRY_BACKOFF_MAX must be below CONVEYOR_VISIBILITY_TIMEOUT: a retry "
                "waiting longer than that is handed to a second worker"
            )
        return self

    @property
    def extra_task_modules(self) -> list[str]:
        return [name.strip() for name in self.task_modules.split(",") if name.strip()]

    @property
    def redis(self) -> str:
        return self.redis_url or DEFAULT_REDIS_URL

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
        return Settings()
    except ValidationError as exc:
        raise SettingsError(f"invalid configuration: {describe_validation_error(exc)}") from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
