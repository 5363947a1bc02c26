"""Periodic housekeeping run by Beat."""

from __future__ import annotations

from celery import shared_task

from conveyor.core import dead_letters
from conveyor.core.db import session_scope
from conveyor.core.settings import get_settings
from conveyor.core.task import ConveyorTask


@shared_task(base=ConveyorTask, name="conveyor.maintenance.purge_dead_letters", track=False)
def purge_dead_letters() -> int:
    """Delete dead letters older than CONVEYOR_DEAD_LETTER_RETENTION_DAYS."""
    with session_scope() as session:
        return dead_letters.purge_older_than(session, get_settings().dead_letter_retention_days)
