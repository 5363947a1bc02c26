"""Every setting, grouped and described: what `conveyor settings` and docs/settings.md show."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr
from pydantic_settings import BaseSettings

from conveyor.core import workloads
from conveyor.core.redaction import safe_url
from conveyor.core.settings import Settings, section

ENV_PREFIX = "CONVEYOR_"
# Variables of the project's own test suite, not settings.
IGNORED_PREFIXES = ("CONVEYOR_TEST_",)
MASKED = "********"
UNSET = "\u2013"  # an en dash, as in the README's tables

# Display order: groups as listed, fields within a group as listed; then each workload's.
GROUPS: dict[str, tuple[str, ...]] = {
    "System": (
        "data_dir",
        "redis_url",
        "broker_url",
        "result_backend_url",
        "redis_sentinel_master",
        "database_url",
        "database_schema",
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
        "queues",
        "workloads",
    ),
    "Tasks and workers": (
        "task_soft_time_limit",
        "task_time_limit",
        "visibility_timeout",
        "unacked_restore_interval",
        "progress_interval",
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
        "scheduler_tick_seconds",
        "task_events",
    ),
    "Retries": ("retry_max_attempts", "retry_backoff_base", "retry_backoff_max"),
    "Retention and cleanup": (
        "job_retention_days",
        "dead_letter_retention_days",
        "webhook_delivery_retention_days",
        "stats_retention_days",
        "cleanup_batch_size",
    ),
    "API limits and idempotency": (
        "api_rate_limit_per_minute",
        "api_key_cache_seconds",
        "api_auth_failures_per_minute",
        "sse_max_streams_per_key",
        "idempotency_ttl_seconds",
    ),
    "Dashboard": ("dashboard_session_hours", "dashboard_live_seconds"),
    "Outgoing HTTP and webhooks": (
        "allow_private_networks",
        "webhook_timeout_seconds",
        "webhook_retry_schedule",
        "webhook_disable_after_seconds",
        "webhook_dispatch_interval_seconds",
    ),
    "Metrics": (
        "metrics_dir",
        "worker_metrics_port",
        "queue_wait_threshold_seconds",
        "stats_flush_seconds",
    ),
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


def groups() -> list[tuple[str, type[BaseSettings], tuple[str, ...]]]:
    """(title, settings class, fields): core's groups, then one per workload with settings."""
    found: list[tuple[str, type[BaseSettings], tuple[str, ...]]] = [
        (title, Settings, fields) for title, fields in GROUPS.items()
    ]
    for name, cls in sorted(workloads.settings_classes(), key=lambda item: item[0]):
        found.append((f"{name.capitalize()} workload", cls, tuple(cls.model_fields)))
    return found


def describe(settings: Settings | None = None) -> list[SettingDoc]:
    """Every setting in group order; values from `settings` and the workloads' sections read
    with them (the defaults when None)."""
    docs = []
    for group, cls, fields in groups():
        current: BaseSettings | None = None
        if settings is not None:
            current = settings if cls is Settings else section(cls)
        for field in fields:
            info = cls.model_fields[field]
            default = info.get_default(call_default_factory=True)
            value = default if current is None else getattr(current, field)
            docs.append(
                SettingDoc(
                    group=group,
                    name=field,
                    variable=env_name(field),
                    value=display(value),
                    default=display(default),
                    description=info.description or "",
                    changed=value != default,
                )
            )
    return docs


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """One line per CONVEYOR_* variable that is no setting (a typo is otherwise silently
    ignored), with the closest setting's name when there is one."""
    known = {env_name(field) for _, cls, fields in groups() for field in fields} | {
        env_name(field) for field in Settings.model_fields
    }
    lines = []
    for variable in sorted(environ):
        if not variable.startswith(ENV_PREFIX) or variable in known:
            continue
        if variable.startswith(IGNORED_PREFIXES):
            continue
        close = difflib.get_close_matches(variable, sorted(known), n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        lines.append(f"{variable} is not a Conveyor setting and is ignored{hint}")
    return lines


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
        "descriptions in src/conveyor/core/settings.py and each workload's settings.py. -->",
        "",
        f"Conveyor reads every setting from an environment variable with the prefix "
        f"`{ENV_PREFIX}`, or from a `.env` file in the working directory; a bad value stops "
        "every command with one line naming the variable, and `conveyor up` names any "
        f"`{ENV_PREFIX}` variable that is no setting (a misspelt name) with the closest one.",
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
