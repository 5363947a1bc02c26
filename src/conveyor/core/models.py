"""Ledger tables: jobs, dead letters and API keys."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {  # noqa: RUF012 - SQLAlchemy reads this class attribute
        datetime: DateTime(timezone=True),
        dict[str, Any]: JSON,
        list[Any]: JSON,
    }


class JobState(StrEnum):
    QUEUED = "queued"
    STARTED = "started"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    DEAD = "dead"


TERMINAL_STATES = frozenset(
    {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.DEAD}
)


class Job(Base):
    __tablename__ = "conveyor_jobs"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    queue: Mapped[str] = mapped_column(String(64))
    owner: Mapped[str | None] = mapped_column(String(120))
    state: Mapped[str] = mapped_column(String(16), default=JobState.QUEUED)
    progress_current: Mapped[int] = mapped_column(Integer, default=0)
    progress_total: Mapped[int | None] = mapped_column(Integer)
    progress_message: Mapped[str | None] = mapped_column(String(500))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    args: Mapped[list[Any]] = mapped_column(default=list)
    kwargs: Mapped[dict[str, Any]] = mapped_column(default=dict)
    result: Mapped[Any | None] = mapped_column(JSON)
    error_type: Mapped[str | None] = mapped_column(String(200))
    error_message: Mapped[str | None] = mapped_column(Text)
    error_traceback: Mapped[str | None] = mapped_column(Text)
    parent_id: Mapped[str | None] = mapped_column(String(64))
    root_id: Mapped[str | None] = mapped_column(String(64))
    # Position in a workflow: later stages of a chain wait for earlier ones.
    workflow_stage: Mapped[int | None] = mapped_column(Integer)
    replay_of: Mapped[str | None] = mapped_column(String(64))
    worker_host: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column()
    finished_at: Mapped[datetime | None] = mapped_column()
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    # The arguments as sent, kept only while the job is active so the reconciler can publish a
    # lost job again (`args`/`kwargs` above are masked for display); cleared when it ends.
    payload: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # An outbox flag set in the same statement that ends the job: its outcome events (webhooks)
    # are still to be emitted. Cleared in the transaction that records them.
    events_pending: Mapped[bool] = mapped_column(default=False)

    __table_args__ = (
        Index("ix_conveyor_jobs_owner_created", "owner", "created_at", "id"),
        Index(
            "ix_conveyor_jobs_events_pending",
            "events_pending",
            sqlite_where=text("events_pending"),
            postgresql_where=text("events_pending"),
        ),
        Index("ix_conveyor_jobs_state_created", "state", "created_at"),
        Index("ix_conveyor_jobs_queue_created", "queue", "created_at"),
        # The oldest queued job of a queue in one seek (queue overview); queued rows only.
        Index(
            "ix_conveyor_jobs_queued",
            "queue",
            "created_at",
            sqlite_where=text("state = 'queued'"),
            postgresql_where=text("state = 'queued'"),
        ),
        Index("ix_conveyor_jobs_name_created", "name", "created_at"),
        # The newest jobs of all, or of a time range: a page without a full scan.
        Index("ix_conveyor_jobs_created", "created_at", "id"),
        Index("ix_conveyor_jobs_parent", "parent_id"),
        Index("ix_conveyor_jobs_finished", "finished_at"),
    )


class JobAttempt(Base):
    """An attempt that failed: its error and where it ran. A job's last attempt is the job's
    own row, so a job that succeeds at once writes nothing here."""

    __tablename__ = "conveyor_job_attempts"

    job_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    attempt: Mapped[int] = mapped_column(Integer, primary_key=True)
    outcome: Mapped[str] = mapped_column(String(16))
    error_type: Mapped[str | None] = mapped_column(String(200))
    error_message: Mapped[str | None] = mapped_column(Text)
    error_traceback: Mapped[str | None] = mapped_column(Text)
    worker_host: Mapped[str | None] = mapped_column(String(200))
    started_at: Mapped[datetime | None] = mapped_column()
    finished_at: Mapped[datetime] = mapped_column(default=utcnow)


class JobTag(Base):
    """A tag given to a job when it was submitted; searched by tag, newest first."""

    __tablename__ = "conveyor_job_tags"

    job_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tag: Mapped[str] = mapped_column(String(100), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (Index("ix_conveyor_job_tags_tag_created", "tag", "created_at"),)


class DeadLetter(Base):
    __tablename__ = "conveyor_dead_letters"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    job_id: Mapped[str] = mapped_column(String(64), index=True)
    task_name: Mapped[str] = mapped_column(String(200))
    queue: Mapped[str] = mapped_column(String(64))
    owner: Mapped[str | None] = mapped_column(String(120), index=True)
    args: Mapped[list[Any]] = mapped_column(default=list)
    kwargs: Mapped[dict[str, Any]] = mapped_column(default=dict)
    error_type: Mapped[str] = mapped_column(String(200))
    error_message: Mapped[str] = mapped_column(Text)
    error_traceback: Mapped[str | None] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(String(32))
    attempts: Mapped[int] = mapped_column(Integer)
    job_created_at: Mapped[datetime | None] = mapped_column()
    failed_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    replayed_job_id: Mapped[str | None] = mapped_column(String(64))
    replayed_at: Mapped[datetime | None] = mapped_column()

    # The dashboard's searches: by task, queue or error type, newest first.
    __table_args__ = (
        Index("ix_conveyor_dead_letters_task_failed", "task_name", "failed_at"),
        Index("ix_conveyor_dead_letters_queue_failed", "queue", "failed_at"),
        Index("ix_conveyor_dead_letters_error_failed", "error_type", "failed_at"),
    )


class ApiKey(Base):
    __tablename__ = "conveyor_api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(120))
    owner: Mapped[str] = mapped_column(String(120))
    # Non-secret part of the key, used to find the row without scanning every hash.
    prefix: Mapped[str] = mapped_column(String(32), unique=True)
    key_hash: Mapped[str] = mapped_column(String(128))
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column()
    revoked_at: Mapped[datetime | None] = mapped_column()


class IdempotencyRecord(Base):
    """A creating POST seen under an Idempotency-Key, and the response it got."""

    __tablename__ = "conveyor_idempotency_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner: Mapped[str] = mapped_column(String(120))
    key: Mapped[str] = mapped_column(String(255))
    method: Mapped[str] = mapped_column(String(10))
    path: Mapped[str] = mapped_column(String(500))
    # SHA-256 of method, path and body: the same key with another body is a client error.
    request_hash: Mapped[str] = mapped_column(String(64))
    # "in_flight" until the first request answers, then "done".
    status: Mapped[str] = mapped_column(String(16), default="in_flight")
    response_status: Mapped[int | None] = mapped_column(Integer)
    response_body: Mapped[str | None] = mapped_column(Text)
    response_headers: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(index=True)

    __table_args__ = (UniqueConstraint("owner", "key", name="uq_conveyor_idempotency_owner_key"),)


class TaskEffect(Base):
    """An effect a task completed, recorded under a key so a redelivery skips it."""

    __tablename__ = "conveyor_task_effects"

    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    task_name: Mapped[str] = mapped_column(String(200))
    job_id: Mapped[str | None] = mapped_column(String(64))
    result: Mapped[Any | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class WebhookEndpoint(Base):
    __tablename__ = "conveyor_webhook_endpoints"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner: Mapped[str] = mapped_column(String(120), index=True)
    url: Mapped[str] = mapped_column(String(2000))
    events: Mapped[list[Any]] = mapped_column(default=list)
    description: Mapped[str | None] = mapped_column(String(500))
    # Standard Webhooks secret ("whsec_" + base64); needed in clear to sign deliveries.
    secret: Mapped[str] = mapped_column(String(200))
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    disabled_reason: Mapped[str | None] = mapped_column(String(500))
    consecutive_failures: Mapped[int] = mapped_column(Integer, default=0)
    # The first failed attempt since the last success: the endpoint is disabled once its
    # deliveries have failed for CONVEYOR_WEBHOOK_DISABLE_AFTER_SECONDS from here.
    failing_since: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class WebhookDelivery(Base):
    """One event for one endpoint; retried until delivered or out of attempts."""

    __tablename__ = "conveyor_webhook_deliveries"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # the webhook-id header
    endpoint_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("conveyor_webhook_endpoints.id", ondelete="CASCADE"), index=True
    )
    event_type: Mapped[str] = mapped_column(String(100))
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # pending, succeeded, failed (out of attempts), skipped (endpoint disabled)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_duration_ms: Mapped[float | None] = mapped_column(Float)
    last_response_excerpt: Mapped[str | None] = mapped_column(Text)
    last_error: Mapped[str | None] = mapped_column(Text)
    next_attempt_at: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    delivered_at: Mapped[datetime | None] = mapped_column()

    # The dispatcher looks for pending deliveries that are due, every few seconds.
    __table_args__ = (Index("ix_conveyor_webhook_deliveries_due", "status", "next_attempt_at"),)


class WebhookAttempt(Base):
    """The log of every delivery attempt: status code, duration and a response excerpt."""

    __tablename__ = "conveyor_webhook_attempts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    delivery_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("conveyor_webhook_deliveries.id", ondelete="CASCADE"), index=True
    )
    attempt: Mapped[int] = mapped_column(Integer)
    status_code: Mapped[int | None] = mapped_column(Integer)
    duration_ms: Mapped[float] = mapped_column(Float)
    response_excerpt: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
