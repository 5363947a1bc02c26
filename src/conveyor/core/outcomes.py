"""Listeners for job outcomes (succeeded, failed, dead, cancelled), e.g. webhooks and metrics.

A listener failing must never change the job's outcome: errors are logged and swallowed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

Listener = Callable[[dict[str, Any]], None]
_listeners: list[Listener] = []


def on_job_outcome(listener: Listener) -> Listener:
    """Register `listener(job)`; `job` is the ledger's job dict plus its `owner`."""
    if listener not in _listeners:
        _listeners.append(listener)
    return listener


def emit(job: dict[str, Any]) -> None:
    for listener in list(_listeners):
        try:
            listener(job)
        except Exception:
            log.exception("job outcome listener %r failed for job %s", listener, job.get("id"))
