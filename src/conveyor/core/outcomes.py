"""Listeners for job outcomes (succeeded, failed, dead, cancelled), fed by an outbox.

The statement that ends a job also sets its `events_pending` flag (ledger.py). Emitting
claims the flag and runs the listeners (webhooks) in one transaction, so each outcome is told
exactly once: a listener that fails rolls the claim back, and the sweep run by Beat
(`dispatch_pending`) tries again. A listener never changes the job's outcome.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any

from sqlalchemy import Connection, select, update
from sqlalchemy.orm import Session

from conveyor.core import ledger
from conveyor.core.db import autocommit, session_scope
from conveyor.core.models import Job, utcnow

log = logging.getLogger(__name__)

# listener(job, session): `job` is the ledger's job dict plus its `owner`; what the listener
# writes through `session` commits with the claim.
Listener = Callable[[dict[str, Any], Session], None]
_listeners: list[Listener] = []
# The sweep leaves alone outcomes younger than this: their worker is telling them right now.
SWEEP_AFTER = timedelta(seconds=5)


def on_job_outcome(listener: Listener) -> Listener:
    if listener not in _listeners:
        _listeners.append(listener)
    return listener


def has_listeners() -> bool:
    return bool(_listeners)


class _ListenerFailed(Exception):
    pass


# end(connection, told): the statement that ends a job, returning its row (None: nothing
# ended). `told` asks it to leave the outbox flag clear.
Ending = Callable[[Connection, bool], Mapping[str, Any] | None]


def end_telling(end: Ending) -> Mapping[str, Any] | None:
    """End a job and tell the listeners in one transaction: one commit for both, no outbox
    round trip. When a listener fails, all of it is rolled back and the job is ended alone,
    its outbox flag set, for the sweep: a listener never changes the job's outcome."""
    try:
        with session_scope() as session:
            row = end(session.connection(), True)
            if row is not None and row["owner"] is not None:
                job = {**ledger.job_to_dict(row), "owner": row["owner"]}
                for listener in list(_listeners):
                    try:
                        listener(job, session)
                    except Exception as exc:
                        raise _ListenerFailed(exc) from exc
            return row
    except _ListenerFailed as failed:
        log.warning("outcome events left for the sweep: %s", failed)
    with autocommit() as connection:
        return end(connection, False)


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
        for listener in list(_listeners):
            listener(job, session)
    return True


def emit(job: dict[str, Any]) -> None:
    """Right after a job ended: tell its outcome now, or leave it to the sweep."""
    if job.get("owner") is None:
        return  # nobody to tell: the ending statement set no flag
    if not _listeners:
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
