"""Workloads and queues: what every worker loads, and where each task goes.

A workload is a task module, the queues its tasks go to, and optionally a router, Beat
entries and settings of its own. Conveyor's own workloads register through the
`conveyor.workloads` entry-point group, exactly as a package of yours can; plain task modules
and queues come from CONVEYOR_TASK_MODULES and CONVEYOR_QUEUES.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from fnmatch import fnmatchcase
from functools import lru_cache
from importlib.metadata import entry_points
from typing import Any

from conveyor.core.extras import MissingExtra, missing
from conveyor.core.settings import Settings, SettingsError, parse_queues

ENTRY_POINT_GROUP = "conveyor.workloads"

# The job system's own tasks and queues.
CORE_TASK_MODULES = (
    "conveyor.diagnostics.tasks",
    "conveyor.core.maintenance",
    "conveyor.core.bulk_replay",
    "conveyor.webhooks.tasks",
)
CORE_QUEUES: dict[str, tuple[str, ...]] = {
    "webhooks": ("conveyor.webhooks.*",),
    "default": (),
}


@dataclass(frozen=True)
class Workload:
    """What a workload adds. Modules are named, not imported, so listing workloads is cheap."""

    name: str
    tasks: str
    # Queue name → task-name patterns (fnmatch) routed to it.
    queues: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # A module with `router` (an APIRouter), and optionally `body_limits(settings)`.
    api: str | None = None
    # "module:function": function(settings) → Beat schedule entries.
    beat: str | None = None
    # "module:Class": the workload's settings (a BaseSettings), listed by `conveyor settings`.
    settings: str | None = None
    # The pip extra that installs what it needs, and modules that extra provides.
    extra: str | None = None
    needs: tuple[str, ...] = ()

    def missing_module(self) -> str | None:
        return missing(self.needs)


class UnknownQueue(SettingsError):
    """A task was sent to a queue that no worker is told to consume."""


@lru_cache(maxsize=1)
def installed() -> dict[str, Workload]:
    """Every workload registered by an installed package."""
    found: dict[str, Workload] = {}
    for point in entry_points(group=ENTRY_POINT_GROUP):
        workload = point.load()
        if not isinstance(workload, Workload):
            raise SettingsError(
                f"entry point {point.name} = {point.value} in group {ENTRY_POINT_GROUP} "
                "is not a conveyor.core.workloads.Workload"
            )
        found[workload.name] = workload
    return found


def enabled(settings: Settings) -> list[Workload]:
    """The workloads CONVEYOR_WORKLOADS selects, each with what it needs installed."""
    return list(_enabled(settings.workloads.strip().lower()))


@lru_cache(maxsize=8)
def _enabled(choice: str) -> tuple[Workload, ...]:
    # Cached: routing consults it on every publish.
    available = installed()
    if choice == "auto":
        return tuple(w for w in available.values() if w.missing_module() is None)
    if choice in ("", "none"):
        return ()
    chosen: list[Workload] = []
    for name in (part.strip() for part in choice.split(",")):
        if not name:
            continue
        workload = available.get(name)
        if workload is None:
            names = ", ".join(sorted(available)) or "none installed"
            raise SettingsError(
                f"CONVEYOR_WORKLOADS names {name!r}, which is not installed (installed: {names})"
            )
        absent = workload.missing_module()
        if absent is not None:
            raise MissingExtra(
                workload.extra or name, f"CONVEYOR_WORKLOADS: the {name} workload", absent
            )
        chosen.append(workload)
    return tuple(chosen)


def not_enabled(settings: Settings) -> dict[str, str]:
    """Installed workloads left out, each with why (for banners and `conveyor status`)."""
    on = {w.name for w in enabled(settings)}
    reasons: dict[str, str] = {}
    for workload in installed().values():
        if workload.name in on:
            continue
        absent = workload.missing_module()
        if absent is not None and workload.extra:
            reasons[workload.name] = f"pip install 'conveyor[{workload.extra}]'"
        else:
            reasons[workload.name] = "not in CONVEYOR_WORKLOADS"
    return reasons


def task_modules(settings: Settings) -> list[str]:
    modules = [*CORE_TASK_MODULES, *(w.tasks for w in enabled(settings))]
    return [*modules, *(m for m in settings.extra_task_modules if m not in modules)]


def queue_routes(settings: Settings) -> dict[str, tuple[str, ...]]:
    """Every queue, with its routing patterns: yours first, so they win over the built-in ones."""
    return _queue_routes(settings.workloads.strip().lower(), settings.queues)


@lru_cache(maxsize=8)
def _queue_routes(choice: str, declared: str) -> dict[str, tuple[str, ...]]:
    routes: dict[str, tuple[str, ...]] = dict(parse_queues(declared))
    for source in (*(w.queues for w in _enabled(choice)), CORE_QUEUES):
        for queue, patterns in source.items():
            routes[queue] = routes.get(queue, ()) + tuple(patterns)
    return routes


def queues(settings: Settings) -> list[str]:
    return list(queue_routes(settings))


def queue_for_name(task_name: str, settings: Settings) -> str:
    """The queue a task goes to by its name: the first pattern that matches, else `default`."""
    for queue, patterns in queue_routes(settings).items():
        if any(fnmatchcase(task_name, pattern) for pattern in patterns):
            return queue
    return "default"


def require_queue(queue: str, task_name: str, settings: Settings) -> None:
    known = queue_routes(settings)
    if queue not in known:
        raise UnknownQueue(
            f"task {task_name} goes to queue {queue!r}, which is not declared: add it to "
            f"CONVEYOR_QUEUES (declared: {', '.join(known)})"
        )


def _load(reference: str) -> Any:
    module, _, attribute = reference.partition(":")
    loaded = importlib.import_module(module)
    return getattr(loaded, attribute) if attribute else loaded


def periodic(task: str, seconds: float) -> dict[str, Any]:
    """A Beat entry running `task` every `seconds`; a tick still queued when the next one is
    due is redundant, so it expires."""
    return {"task": task, "schedule": timedelta(seconds=seconds), "options": {"expires": seconds}}


def beat_schedule(settings: Settings) -> dict[str, Any]:
    entries: dict[str, Any] = {}
    for workload in enabled(settings):
        if workload.beat:
            make: Callable[[Settings], dict[str, Any]] = _load(workload.beat)
            entries.update(make(settings))
    return entries


def api_modules(settings: Settings) -> list[Any]:
    """The enabled workloads' API modules, each with `router` (and maybe `body_limits`)."""
    return [_load(w.api) for w in enabled(settings) if w.api]


def settings_classes() -> list[tuple[str, type[Any]]]:
    """(workload name, settings class) for each installed workload that has settings."""
    classes: list[tuple[str, type[Any]]] = []
    for workload in installed().values():
        # Settings modules import without the extra, so `conveyor settings` lists them all.
        if workload.settings:
            classes.append((workload.name, _load(workload.settings)))
    return classes
