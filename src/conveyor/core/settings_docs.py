"""Every setting, grouped and described: what `conveyor settings` and docs/settings.md show."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr

from conveyor.core.redaction import safe_url
from conveyor.core.settings import Settings

ENV_PREFIX = "CONVEYOR_"
MASKED = "********"
UNSET = "\u2013"  # an en dash, as in the README's tables

# Display order: groups as listed, fields within a group as listed.
GROUPS: dict[str, tuple[str, ...]] = {
    "System": (
        "data_dir",
        "redis_url",
        "broker_url",
        "result_backend_url",
        "database_url",
        "db_pool_size",
        "db_pool_recycle",
        "api_host",
        "api_port",
        "public_base_url",
        "bootstrap_api_key",
        "max_body_bytes",
        "log_level",
        "log_json",
        "task_modules",
    ),
    "Tasks and workers": (
        "task_soft_time_limit",
        "task_time_limit",
        "visibility_timeout",
        "unacked_restore_interval",
        "result_expires",
        "worker_concurrency",
        "worker_prefetch_multiplier",
        "worker_max_tasks_per_child",
        "worker_max_memory_per_child_kib",
        "redis_timeout_seconds",
        "worker_heartbeat_seconds",
        "worker_lost_after_seconds",
        "reconcile_interval_seconds",
        "reconcile_grace_seconds",
        "reconcile_scan_limit",
        "task_events",
    ),
    "Retries": ("retry_max_attempts", "retry_backoff_base", "retry_backoff_max"),
    "Retention and cleanup": (
        "job_retention_days",
        "dead_letter_retention_days",
        "webhook_delivery_retention_days",
        "cleanup_batch_size",
    ),
    "API limits and idempotency": (
        "api_rate_limit_per_minute",
        "api_auth_failures_per_minute",
        "sse_max_streams_per_key",
        "idempotency_ttl_seconds",
    ),
    "Outgoing HTTP and webhooks": (
        "allow_private_networks",
        "webhook_timeout_seconds",
        "webhook_retry_schedule",
        "webhook_disable_after_seconds",
        "webhook_dispatch_interval_seconds",
    ),
    "Metrics": ("metrics_dir", "worker_metrics_port", "queue_wait_threshold_seconds"),
    "Storage": (
        "storage_backend",
        "storage_dir",
        "file_max_upload_bytes",
        "s3_bucket",
        "s3_prefix",
        "s3_endpoint_url",
        "s3_region",
        "s3_access_key_id",
        "s3_secret_access_key",
        "s3_public_url",
        "s3_presign_seconds",
    ),
    "Email": (
        "smtp_host",
        "smtp_port",
        "smtp_username",
        "smtp_password",
        "smtp_use_tls",
        "smtp_use_ssl",
        "smtp_timeout_seconds",
        "smtp_noop_after_seconds",
        "email_from",
        "email_message_id_domain",
        "email_templates_dir",
        "email_max_recipients",
        "email_max_attachments_bytes",
        "email_batch_max_recipients",
        "email_batch_max_body_bytes",
        "email_batch_chunk_size",
        "email_rate_per_second",
        "email_domain_rate_per_second",
        "email_domain_rates",
        "email_owner_rate_per_second",
        "email_unsubscribe_url",
        "email_unsubscribe_mailto",
        "email_schedule_countdown_max",
        "email_dispatch_interval_seconds",
        "mail_sink",
        "mail_sink_max_messages",
    ),
    "Payments": (
        "payments_gateway",
        "payments_gateway_url",
        "payments_gateway_timeout_seconds",
        "payments_gateway_webhook_secret",
        "stripe_api_key",
        "stripe_api_base",
        "payments_retry_max",
        "payments_backoff_max_seconds",
        "payments_reconcile_interval_seconds",
        "payments_stuck_after_seconds",
        "sandbox_gateway_host",
        "sandbox_gateway_port",
        "sandbox_latency_ms",
        "sandbox_error_rate",
        "sandbox_slow_seconds",
        "sandbox_webhook_url",
    ),
    "Images": (
        "image_max_upload_bytes",
        "image_max_width",
        "image_max_height",
        "image_max_pixels",
        "image_presets",
        "image_jpeg_quality",
        "image_webp_quality",
        "image_webp_effort",
        "image_avif_quality",
        "image_avif_effort",
        "image_fetch_timeout_seconds",
        "image_vips_concurrency",
        "image_tune_malloc",
    ),
}


@dataclass(frozen=True)
class SettingDoc:
    """One setting as shown to people: every value already masked and rendered as text."""

    group: str
    name: str
    variable: str
    value: str
    default: str
    description: str
    changed: bool


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def display(value: object) -> str:
    """A value as text a person may see: secrets masked, passwords cut out of URLs."""
    if value is None or value == "":
        return UNSET
    if isinstance(value, SecretStr):
        return MASKED
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Path):
        return value.as_posix()
    if isinstance(value, str):
        return safe_url(value)
    return str(value)


def default_of(field: str) -> object:
    return Settings.model_fields[field].get_default(call_default_factory=True)


def describe(settings: Settings | None = None) -> list[SettingDoc]:
    """Every setting in group order; values from `settings` (the defaults when None)."""
    docs = []
    for group, fields in GROUPS.items():
        for field in fields:
            default = default_of(field)
            value = default if settings is None else getattr(settings, field)
            docs.append(
                SettingDoc(
                    group=group,
                    name=field,
                    variable=env_name(field),
                    value=display(value),
                    default=display(default),
                    description=Settings.model_fields[field].description or "",
                    changed=value != default,
                )
            )
    return docs


def _cell(text: str, *, code: bool = False) -> str:
    # An unescaped pipe starts a new column; a newline ends the row.
    text = text.replace("|", "\\|").replace("\n", " ")
    if code:
        return text if text == UNSET else f"`{text}`"
    # Outside code, <uuid@domain> would turn into a link or a hidden HTML tag.
    return text.replace("<", "\\<")


def markdown() -> str:
    """docs/settings.md: every setting with its default, one table per group."""
    lines = [
        "# Settings",
        "",
        "<!-- Generated by `conveyor settings --markdown > docs/settings.md`; edit the "
        "descriptions in src/conveyor/core/settings.py. -->",
        "",
        f"Conveyor reads every setting from an environment variable with the prefix "
        f"`{ENV_PREFIX}`, or from a `.env` file in the working directory; a bad value stops "
        "every command with one line naming the variable.",
    ]
    current = ""
    for doc in describe():
        if doc.group != current:
            current = doc.group
            lines += ["", f"## {current}", "", "| variable | default | description |"]
            lines.append("|---|---|---|")
        variable, default = _cell(doc.variable, code=True), _cell(doc.default, code=True)
        lines.append(f"| {variable} | {default} | {_cell(doc.description)} |")
    return "\n".join(lines) + "\n"
