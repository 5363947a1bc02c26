"""Configuration: every setting comes from the environment (prefix CONVEYOR_) or `.env`."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Literal, Self, TypeVar, cast
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

REDIS_SCHEMES = ("redis://", "rediss://", "sentinel://")
AMQP_SCHEMES = ("amqp://", "amqps://", "pyamqp://")

# The names Heroku, Render and Railway give the URLs they inject; the CONVEYOR_ ones win.
PLATFORM_URLS = {"redis_url": "REDIS_URL", "database_url": "DATABASE_URL"}


class SettingsError(Exception):
    """A configuration problem, phrased so a person can fix it."""


QUEUE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,79}$")
TASK_PATTERN = re.compile(r"^[A-Za-z0-9_.*?\[\]!-]{1,200}$")


def parse_queues(value: str) -> dict[str, tuple[str, ...]]:
    """`billing=myapp.billing.*|myapp.invoices.*,exports` → {queue: task-name patterns}."""
    queues: dict[str, tuple[str, ...]] = {}
    for entry in value.split(","):
        if not entry.strip():
            continue
        name, _, patterns = entry.partition("=")
        name = name.strip()
        if not QUEUE_NAME.match(name):
            raise ValueError(
                f"{name!r} is not a queue name: letters, digits, '_', '.' or '-', "
                "like billing=myapp.billing.*"
            )
        if name in queues:
            raise ValueError(f"queue {name!r} is declared twice")
        routed = tuple(p.strip() for p in patterns.split("|") if p.strip())
        for pattern in routed:
            if not TASK_PATTERN.match(pattern):
                raise ValueError(
                    f"{pattern!r} is not a task-name pattern (letters, digits, '_', '.', '-' "
                    "and the wildcards * ? [ ]): separate queues with ',' and patterns with '|'"
                )
        queues[name] = routed
    return queues


# How Settings and every workload's section read: CONVEYOR_* variables, then `.env`.
SETTINGS_CONFIG = SettingsConfigDict(
    env_prefix="CONVEYOR_",
    env_file=".env",
    env_file_encoding="utf-8",
    extra="ignore",
)


class Settings(BaseSettings):
    model_config = SETTINGS_CONFIG

    data_dir: Path = Field(
        default=Path(".conveyor"),
        description="Local state: SQLite ledger, embedded Redis, Beat schedule, runtime file.",
    )

    redis_url: str | None = Field(
        default=None,
        description=(
            "Redis for progress and cancel flags (redis://, rediss://, or sentinel:// with "
            "CONVEYOR_REDIS_SENTINEL_MASTER); unset: REDIS_URL, else that of a running "
            "`conveyor up`."
        ),
    )
    broker_url: str | None = Field(
        default=None,
        description="Celery broker: a Redis URL, or amqp:// for RabbitMQ; unset: the Redis URL.",
    )
    result_backend_url: str | None = Field(
        default=None, description="Celery results (chords need them); unset: the Redis URL."
    )
    redis_sentinel_master: str | None = Field(
        default=None,
        description=(
            "The master name the Sentinels of a sentinel:// URL watch "
            "(sentinel://host:26379;sentinel://host2:26379/0)."
        ),
    )
    database_url: str | None = Field(
        default=None,
        description=(
            "Ledger URL, sqlite:/// or postgresql://; unset: DATABASE_URL (postgres:// too), "
            "else `up`'s or SQLite in data_dir."
        ),
    )
    database_schema: str | None = Field(
        default=None,
        description="PostgreSQL schema for Conveyor's tables, created if missing; unset: public.",
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
    progress_interval: float = Field(
        default=0.25,
        ge=0,
        le=60,
        description=(
            "Seconds a job's progress report may wait to be written, at most once per job in "
            "that time (a job never waits for it), and how often a running job looks for a "
            "cancel; 0 = write each report at once and look every time."
        ),
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
    scheduler_tick_seconds: float = Field(
        default=1.0,
        ge=0.1,
        le=60,
        description=(
            "How often `conveyor scheduler` looks for due schedules (schedules as data); "
            "a slot is claimed at most this long after it comes."
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

    # Above the API's usual concurrency: a smaller pool closes and reopens connections under
    # load (a PostgreSQL backend started for a handful of requests each).
    db_pool_size: int = Field(
        default=10,
        ge=1,
        description="Database connections each process keeps open; as many more under load.",
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
        description=(
            "Cleanup deletes succeeded, failed and cancelled jobs older than this (days), "
            "and schedule runs as old."
        ),
    )
    webhook_delivery_retention_days: int = Field(
        default=14,
        ge=1,
        description="Cleanup deletes webhook deliveries older than this (days), held ones too.",
    )
    stats_retention_days: int = Field(
        default=8,
        ge=1,
        description=(
            "Cleanup deletes the per-minute job figures (the dashboard's charts) older than "
            "this (days)."
        ),
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
    api_key_cache_seconds: float = Field(
        default=5.0,
        ge=0,
        description=(
            "Seconds an API process trusts a key it checked, without the database; a revoked "
            "key is refused within this time. 0 = check every request."
        ),
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

    dashboard_session_hours: float = Field(
        default=8.0,
        gt=0,
        le=24 * 30,
        description="How long a dashboard sign-in lasts before the key is asked for again.",
    )
    dashboard_live_seconds: float = Field(
        default=2.0,
        ge=0.2,
        le=60,
        description="How often the dashboard's live regions are refreshed over their stream.",
    )

    queue_wait_threshold_seconds: float = Field(
        default=0.0,
        ge=0,
        description="Log queue.wait_exceeded when a job waited longer (seconds); 0 = off.",
    )
    stats_flush_seconds: float = Field(
        default=5.0,
        gt=0,
        le=300,
        description=(
            "Seconds between a worker process's writes of its job figures to the database; "
            "a crash loses at most this long of them."
        ),
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

    file_max_upload_bytes: int = Field(
        default=10 * 1_048_576, ge=1024, description="Largest file POST /api/v1/files accepts."
    )

    task_modules: str = Field(
        default="",
        description="Task modules for workers to load, comma-separated: myapp.tasks,billing.jobs.",
    )
    queues: str = Field(
        default="",
        description=(
            "Your own queues, comma-separated, each optionally with the task names routed to it: "
            "`billing=myapp.billing.*|myapp.invoices.*,exports`."
        ),
    )
    workloads: str = Field(
        default="auto",
        description=(
            "Workloads to run: `auto` (every installed one whose extra is installed), `none`, "
            "or names: `email,payments`."
        ),
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

    @field_validator("database_schema")
    @classmethod
    def _schema_name(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", value.strip()):
            raise ValueError("must be a lowercase name of letters, digits and _ (like conveyor)")
        return value.strip()

    @field_validator("redis_url", "result_backend_url")
    @classmethod
    def _a_redis_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(REDIS_SCHEMES):
            raise ValueError("must be a redis://, rediss:// or sentinel:// URL")
        return value

    @field_validator("broker_url")
    @classmethod
    def _known_broker(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(REDIS_SCHEMES + AMQP_SCHEMES):
            raise ValueError("must be a redis://, rediss://, sentinel:// or amqp:// URL")
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
    def _sentinel_has_a_master(self) -> Self:
        urls = (self.redis_url, self.broker_url, self.result_backend_url)
        if self.redis_sentinel_master is None and any(
            url and url.startswith("sentinel://") for url in urls
        ):
            raise ValueError(
                "a sentinel:// URL needs CONVEYOR_REDIS_SENTINEL_MASTER, the master name "
                "its Sentinels watch"
            )
        return self

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

    @field_validator("queues")
    @classmethod
    def _queue_declarations(cls, value: str) -> str:
        parse_queues(value)
        return value

    @property
    def extra_task_modules(self) -> list[str]:
        return [name.strip() for name in self.task_modules.split(",") if name.strip()]

    @property
    def declared_queues(self) -> dict[str, tuple[str, ...]]:
        """CONVEYOR_QUEUES: each queue and the task-name patterns routed to it."""
        return parse_queues(self.queues)

    # The running `conveyor up` whose runtime file supplied the URLs not set here, if any.
    _runtime: Runtime | None = PrivateAttr(default=None)
    _from_runtime: frozenset[str] = PrivateAttr(default=frozenset())
    # The URLs taken from REDIS_URL or DATABASE_URL.
    _from_platform: frozenset[str] = PrivateAttr(default=frozenset())

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
        if field in self._from_platform:
            return PLATFORM_URLS[field]
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
        message = str(item["msg"]).removeprefix("Value error, ")
        # A rule across settings names them in its message.
        lines.append(f"CONVEYOR_{loc}: {message}" if loc else message)
    return "; ".join(lines)


SettingsT = TypeVar("SettingsT", bound=BaseSettings)


def _read(cls: type[SettingsT]) -> SettingsT:
    """`cls` read from the environment; a bad value is one SettingsError naming its variable."""
    try:
        return cls()
    except ValidationError as exc:
        raise SettingsError(f"invalid configuration: {describe_validation_error(exc)}") from None


def load_settings() -> Settings:
    return with_runtime(with_platform_urls(_read(Settings)))


def with_platform_urls(settings: Settings, environ: Mapping[str, str] | None = None) -> Settings:
    """Fill the URLs CONVEYOR_* leaves unset from REDIS_URL and DATABASE_URL, validated alike."""
    environ = os.environ if environ is None else environ
    found = {
        field: value
        for field, name in PLATFORM_URLS.items()
        if getattr(settings, field) is None and (value := environ.get(name, "").strip())
    }
    if not found:
        return settings
    resolved = settings.model_copy()
    for field, value in found.items():
        try:
            Settings.__pydantic_validator__.validate_assignment(resolved, field, value)
        except ValidationError as exc:
            message = str(exc.errors()[0]["msg"]).removeprefix("Value error, ")
            raise SettingsError(
                f"invalid configuration: {PLATFORM_URLS[field]}: {message}; or set "
                f"CONVEYOR_{field.upper()}, which wins"
            ) from None
    resolved._from_platform = frozenset(found)
    return resolved


def with_runtime(settings: Settings) -> Settings:
    """Fill the URLs still unset from the `conveyor up` running in data_dir."""
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


_given: Settings | None = None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return _given or load_settings()


def use_settings(settings: Settings | None) -> None:
    """Make `settings` the process's settings (None: read the environment again)."""
    global _given
    _given = settings
    get_settings.cache_clear()
    _sections.clear()


class SettingsSection(BaseSettings):
    """Settings a workload owns, read as Settings are; `section(cls)` gives the process's one."""

    model_config = SETTINGS_CONFIG

    def resolve(self, settings: Settings) -> Self:
        """Complete what only the core settings know (a URL `conveyor up` recorded)."""
        return self


# Each section with the Settings it was read alongside: when those change, it is read again.
_sections: dict[type[BaseSettings], tuple[Settings, BaseSettings]] = {}


def section(cls: type[SettingsT]) -> SettingsT:
    """The process's instance of a workload's settings class, cached as get_settings() is."""
    settings = get_settings()
    cached = _sections.get(cls)
    if cached is not None and cached[0] is settings:
        return cast(SettingsT, cached[1])
    loaded = _read(cls)
    if isinstance(loaded, SettingsSection):
        loaded = loaded.resolve(settings)
    _sections[cls] = (settings, loaded)
    return loaded
