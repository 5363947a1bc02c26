"""Optional dependencies: a part whose extra is not installed says which one to install."""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from conveyor.core.settings import SettingsError


class MissingExtra(SettingsError):
    """A feature was asked for whose optional dependencies are not installed."""

    def __init__(self, extra: str, what: str, module: str) -> None:
        self.extra = extra
        super().__init__(
            f"{what} needs the '{extra}' extra ({module} is not installed): "
            f"pip install 'conveyor[{extra}]'"
        )


def missing(modules: tuple[str, ...] | list[str]) -> str | None:
    """The first of `modules` that cannot be imported, without importing any of them."""
    for name in modules:
        try:
            if importlib.util.find_spec(name) is None:
                return name
        except (ImportError, ValueError):
            return name
    return None


def require(module: str, *, extra: str, what: str) -> ModuleType:
    """Import `module`, or raise MissingExtra naming the extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        # Only the module itself (or a parent) missing is an extra's fault; a broken
        # install of it (a missing shared library) keeps its own message.
        if exc.name is not None and module.startswith(exc.name.split(".")[0]):
            raise MissingExtra(extra, what, module) from None
        raise
