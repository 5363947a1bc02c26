"""Choosing the shared metrics directory; must run before prometheus_client is imported."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from conveyor.core.private import private_dir

ENV_VAR = "PROMETHEUS_MULTIPROC_DIR"


def prepare_multiprocess_dir(*, wipe: bool = False) -> Path | None:
    """Set PROMETHEUS_MULTIPROC_DIR (CONVEYOR_METRICS_DIR, else data_dir/metrics)."""
    from conveyor.core.settings import SettingsError, get_settings

    existing = os.environ.get(ENV_VAR)
    if existing:
        path = Path(existing)
    else:
        try:
            settings = get_settings()
        except SettingsError:
            return None  # the entry point reports the bad setting itself
        path = (settings.metrics_dir or settings.data_dir / "metrics").resolve()
    if wipe and path.exists():
        # A fresh start: samples of processes from an earlier run must not be added in.
        shutil.rmtree(path, ignore_errors=True)
    private_dir(path)
    os.environ[ENV_VAR] = str(path)
    values = sys.modules.get("prometheus_client.values")
    if values is not None:
        # Imported already (the celery command loads plugins such as Flower's, which use it):
        # choose the multiprocess value class now, as an import after this line would have.
        values.ValueClass = values.get_value_class()  # type: ignore[attr-defined]
    return path
