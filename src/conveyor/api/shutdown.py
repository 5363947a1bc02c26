"""Whether this API process is shutting down: its event streams then end by themselves, so
Ctrl-C or SIGTERM is not held up by an open dashboard tab or `GET …/events`."""

from __future__ import annotations

import threading

_stopping = threading.Event()


def begin() -> None:
    _stopping.set()


def stopping() -> bool:
    return _stopping.is_set()
