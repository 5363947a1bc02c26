"""Listeners for job outcomes (succeeded, failed, dead, cancelled), fed by an outbox.

The statement that ends a job also sets its `events_pending` flag (ledger.py), only for an
owned job some listener wants (outcome_listeners.py). Emitting claims the flag and runs the
listeners (webhooks) in one transaction, so each outcome is told exactly once: a listener
that fails rolls the claim back, and the sweep run by Beat (`dispatch_pending`) tries again.
A listener never changes the job's outcome.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from sqlalchemy import select, update

from conveyor.core import ledger, outcome_listeners
from conveyor.core.db import session_scope
from conveyor.core.models import Job, utcnow

log = logging.getLogger(__name__)
# Where listeners have always registered; kept in outcome_listeners.py, which the ledger reads.
on_job_outcome = outcome_listeners.on_job_outcome

# The sweep leaves alone outcomes younger than this: their worker is telling them right now.
SWEEP_AFTER = timedelta(seconds=5)


def dispatch(job_id: str) -> bool:
    """Tell the listeners about one ended job, once; False when nothing was pending."""
    with session_scope() as session:
        claimed = session.scalars(
            update(Job)
            .where(Job.id == job_id, Job.events_pending)
            .values(events_pending=False)
            .returning(Job)
            .execution_options(synchronize_session=False, populate_existing=True)
        ).first()
        if claimed is None:
            return False
        job = {**ledger.job_to_dict(claimed), "owner": claimed.owner}
        for listener in outcome_listeners.listeners():
            listener(job, session)
    return True


def emit(job: dict[str, Any]) -> None:
    """Right after a job ended: tell its outcome now, or leave it to the sweep."""
    if job.get("owner") is None:
        return  # nobody to tell: the ending statement set no flag
    if not outcome_listeners.has_listeners():
        return  # nobody listens in this process: the sweep tells them where they do
    try:
        dispatch(str(job["id"]))
    except Exception as exc:
        log.warning("job %s: outcome events left for the sweep: %s", job.get("id"), exc)


def dispatch_pending(limit: int = 500) -> int:
    """The sweep: every ended job whose outcome was not told yet (its worker died, the
    database failed at that moment). Returns how many were told."""
    with session_scope() as session:
        ids = list(
            session.scalars(
                select(Job.id)
                .where(Job.events_pending, Job.updated_at < utcnow() - SWEEP_AFTER)
                .limit(limit)
            )
        )
    told = 0
    for job_id in ids:
        try:
            told += dispatch(job_id)
        except Exception as exc:
            log.warning("job %s: outcome events not told yet: %s", job_id, exc)
    return told
