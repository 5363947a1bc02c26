"""The Celery application: `celery -A conveyor.worker worker` and `... beat` load this."""

from __future__ import annotations

from conveyor.core.metrics_setup import prepare_multiprocess_dir
from conveyor.core.preflight import require_task_modules
from conveyor.core.private import private_dir
from conveyor.core.settings import SettingsError, get_settings

try:
    # Nothing configured and no `conveyor up` running here: one line, before Celery starts.
    _ = get_settings().broker
    require_task_modules()
    # Beat keeps its schedule file there; a worker its metrics.
    private_dir(get_settings().data_dir)
except SettingsError as exc:
    # One line, not a traceback: Celery would otherwise print the import error in full.
    raise SystemExit(f"conveyor: {exc}") from None

# Before anything imports prometheus_client: pool children share their samples through it.
prepare_multiprocess_dir()

from conveyor.core.celery_app import get_celery  # noqa: E402
from conveyor.core.logging import configure_logging  # noqa: E402

configure_logging()
app = get_celery()
celery = app
