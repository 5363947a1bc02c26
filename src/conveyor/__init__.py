"""Conveyor: production-grade background jobs for FastAPI, on Celery and Redis."""

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("conveyor")
except PackageNotFoundError:  # a source tree on sys.path that was never installed
    __version__ = "0+unknown"

# The public API, imported on first use: `import conveyor.core...` in a worker stays light.
_PUBLIC = {
    "Conveyor": "conveyor.api.mount",
    "Caller": "conveyor.api.deps",
    "Dashboard": "conveyor.dashboard",
    "Submission": "conveyor.core.jobs",
    "submit": "conveyor.core.jobs",
    "submit_async": "conveyor.core.jobs",
    "submit_many": "conveyor.core.jobs",
    "submit_many_async": "conveyor.core.jobs",
    "ConveyorTask": "conveyor.core.task",
    "PermanentError": "conveyor.core.errors",
    "TransientError": "conveyor.core.errors",
    "Settings": "conveyor.core.settings",
}

__all__ = [
    "Caller",
    "Conveyor",
    "ConveyorTask",
    "Dashboard",
    "PermanentError",
    "Settings",
    "Submission",
    "TransientError",
    "__version__",
    "submit",
    "submit_async",
    "submit_many",
    "submit_many_async",
]

if TYPE_CHECKING:
    from conveyor.api.deps import Caller
    from conveyor.api.mount import Conveyor
    from conveyor.core.errors import PermanentError, TransientError
    from conveyor.core.jobs import Submission, submit, submit_async, submit_many, submit_many_async
    from conveyor.core.settings import Settings
    from conveyor.core.task import ConveyorTask
    from conveyor.dashboard import Dashboard


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'conveyor' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
