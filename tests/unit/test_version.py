"""`conveyor --version`, `conveyor.__version__` and the API's version: the installed one."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

import conveyor
from conveyor.api import app as app_module
from conveyor.api.app import create_app
from conveyor.core.settings import PLATFORM_URLS

INSTALLED = metadata.version("conveyor")
CONVEYOR = Path(sys.executable).parent / "conveyor"  # the installed console script


def run_cli(args: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """The CLI in a machine's state where nothing is configured, nor running."""
    clean = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("CONVEYOR_") and name not in PLATFORM_URLS.values()
    }
    clean.update(CONVEYOR_DATA_DIR=str(tmp_path / "data"), **env)
    return subprocess.run(
        [str(CONVEYOR), *args],
        cwd=tmp_path,
        env=clean,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version_prints_the_installed_version_with_nothing_configured(
    tmp_path: Path, flag: str
) -> None:
    result = run_cli([flag], tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"conveyor {INSTALLED}\n"
    assert result.stderr == ""
    assert not (tmp_path / "data").exists()  # no ledger, no Redis was started or looked for


def test_version_needs_no_valid_settings(tmp_path: Path) -> None:
    broken = {"CONVEYOR_LOG_LEVEL": "LOUD", "REDIS_URL": "http://nowhere"}
    assert run_cli(["status"], tmp_path, **broken).returncode == 2  # the settings are bad
    result = run_cli(["--version"], tmp_path, **broken)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"conveyor {INSTALLED}\n"


@pytest.fixture
def no_redis(monkeypatch: pytest.MonkeyPatch) -> None:
    # The app configures Celery when built; nothing here may reach a Redis (port 1: none).
    monkeypatch.setenv("CONVEYOR_REDIS_URL", "redis://127.0.0.1:1/0")


@pytest.mark.usefixtures("no_redis")
def test_the_package_and_the_api_report_the_installed_version() -> None:
    assert conveyor.__version__ == INSTALLED
    app = create_app()
    assert app.version == INSTALLED
    assert app.openapi()["info"]["version"] == INSTALLED


@pytest.mark.usefixtures("no_redis")
def test_the_api_takes_the_package_version(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(app_module, "__version__", "7.8.9")
    assert create_app().version == "7.8.9"


def test_a_source_tree_never_installed_has_a_placeholder_version(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def not_installed(name: str) -> str:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", not_installed)
    try:
        assert importlib.reload(conveyor).__version__ == "0+unknown"
    finally:
        monkeypatch.undo()
        importlib.reload(conveyor)
    assert conveyor.__version__ == INSTALLED
