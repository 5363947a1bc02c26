"""A worker's side of queue pauses: paused queues are left out at start-up, and each
heartbeat brings what the worker consumes back in line with the ledger, healing a missed
broadcast. Queues given to the worker (-Q, else every queue) stay its own while paused.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from celery import Celery
from sqlalchemy.exc import SQLAlchemyError

log = logging.getLogger(__name__)
# The queues this worker process was given, in order; set once, before the consumer starts.
_assigned: list[str] = []


def assigned() -> list[str]:
    return list(_assigned)


def paused_names() -> set[str]:
    from conveyor.core.db import session_scope
    from conveyor.core.queue_control import paused_queues

    with session_scope() as session:
        return set(paused_queues(session))


def leave_out_paused(sender: Any = None, **_: Any) -> None:
    """worker_init: after -Q is applied and before the consumer starts consuming."""
    queues = sender.app.amqp.queues
    _assigned[:] = list(queues.consume_from)
    try:
        paused = paused_names()
    except SQLAlchemyError as exc:
        # Consuming everything beats refusing to start; the heartbeat applies pauses later.
        log.warning("paused queues not read at start-up, consuming all assigned: %s", exc)
        return
    skipped = [name for name in _assigned if name in paused]
    if skipped:
        # deselect, not select(wanted): select([]) leaves every queue selected.
        queues.deselect(skipped)
        log.info("not consuming paused queue(s): %s", ", ".join(skipped))


def consuming_now(app: Celery) -> list[str]:
    """The assigned queues the consumer is set to consume, as the worker's loop left them."""
    for _ in range(5):
        try:
            selected = set(app.amqp.queues.consume_from)
            return [name for name in _assigned if name in selected]
        except RuntimeError:  # the loop changed the selection while it was being read
            time.sleep(0.01)
    return []


def reconcile(app: Celery, hostname: str) -> list[str]:
    """Ask this worker's own loop to consume exactly (assigned - paused); returns that list.

    Raises SQLAlchemyError when the ledger cannot be read (nothing is changed then)."""
    # The consumer first, the ledger second: a pause or resume landing in between then
    # only makes a redundant request, never one that undoes the broadcast.
    now = set(consuming_now(app))
    paused = paused_names()
    wanted = [name for name in _assigned if name not in paused]
    # Through remote control, so the consumer is only touched by the worker's own loop.
    for name in sorted(now - set(wanted)):
        app.control.cancel_consumer(name, destination=[hostname], reply=False)
        log.info("paused queue %s: told this worker to stop consuming it", name)
    for name in [n for n in wanted if n not in now]:
        app.control.add_consumer(name, destination=[hostname], reply=False)
        log.info("queue %s resumed: told this worker to consume it again", name)
    return wanted
