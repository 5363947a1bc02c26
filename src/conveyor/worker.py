"""The Celery application: `celery -A conveyor.worker worker` and `... beat` load this."""

from __future__ import annotations

from conveyor.core.celery_app import get_celery
from conveyor.core.logging import configure_logging
from conveyor.core.settings import SettingsError, get_settings

try:
    get_settings()
except SettingsError as exc:
    # One line, not a traceback: Celery would otherwise print the import error in full.
    raise SystemExit(f"conveyor: {exc}") from None

configure_logging()
app = get_celery()
celery = app
