"""Who listens for job outcomes, and which owners they may have something to tell.

A listener registers with `on_job_outcome` (outcomes.py tells it). It may also give `wanted`:
given the jobs table's owner column, an SQL condition true for the owners it may have
something to tell (webhooks: an owner with an endpoint). The statement that ends a job then
sets the outbox flag only where some listener wants it, so a job nobody listens for is ended
in one statement and told to nobody, with no second transaction to find that out.

Kept apart from outcomes.py so the ledger, which writes the flag, can read it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy import ColumnElement, and_, or_

# listener(job, session): `job` is the ledger's job dict plus its `owner`; what the listener
# writes through `session` commits with the claim.
Listener = Callable[[dict[str, Any], Any], None]
# wanted(owner column): true for the owners this listener may have something to tell.
Wanted = Callable[[ColumnElement[Any]], ColumnElement[bool]]

log = logging.getLogger(__name__)
_listeners: list[Listener] = []
_wanted: dict[Listener, Wanted | None] = {}


def on_job_outcome(listener: Listener, *, wanted: Wanted | None = None) -> Listener:
    """Tell `listener` every owned job's outcome; `wanted` narrows the owners (module doc).
    `wanted` is put into every job's ending statement: it must be valid SQL on the ledger's
    database, and cheap (an indexed lookup)."""
    if listener not in _listeners:
        _listeners.append(listener)
        _wanted[listener] = wanted
    return listener


def listeners() -> list[Listener]:
    return list(_listeners)


def has_listeners() -> bool:
    return bool(_listeners)


def conditions() -> tuple[Wanted | None, ...]:
    """What the outbox flag is built from: a statement built from it is built again when
    this changes."""
    return tuple(_wanted.get(listener) for listener in _listeners)


def pending_when(owner: ColumnElement[Any]) -> ColumnElement[bool]:
    """The outbox flag an ending statement writes: an owned job, wanted by some listener.

    With no listener in this process, every owned job is flagged: the sweep runs where the
    listeners are. A listener that gave no condition wants every owner."""
    built: list[ColumnElement[bool]] = []
    for condition in conditions():
        if condition is None:
            return owner.is_not(None)
        try:
            built.append(condition(owner))
        except Exception as exc:  # a broken condition must not stop jobs from ending
            log.warning("an outcome listener's condition failed; flagging every owner: %s", exc)
            return owner.is_not(None)
    if not built:
        return owner.is_not(None)
    return and_(owner.is_not(None), or_(*built))
