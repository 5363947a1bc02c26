"""Periodic housekeeping run by Beat."""

from __future__ import annotations

from celery import shared_task

from conveyor.core import cleanup, reconcile
from conveyor.core.db import session_scope
from conveyor.core.task import ConveyorTask


@shared_task(base=ConveyorTask, name="conveyor.maintenance.cleanup", track=False)
def run_cleanup() -> dict[str, int]:
    """Prune finished jobs, expired idempotency keys, old deliveries and dead letters."""
    with session_scope() as session:
        return cleanup.run_cleanup(session)


@shared_task(base=ConveyorTask, name="conveyor.maintenance.reconcile", track=False)
def run_reconcile() -> dict[str, int] | None:
    """Heal the ledger: tell pending outcomes, hand out a dead worker's jobs, settle lost jobs."""
    return reconcile.run_once()
