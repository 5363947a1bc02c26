"""The Celery application: `celery -A conveyor.worker worker` and `... beat` load this."""

from __future__ import annotations

from conveyor.core.celery_app import get_celery
from conveyor.core.logging import configure_logging

configure_logging()
app = get_celery()
celery = app
