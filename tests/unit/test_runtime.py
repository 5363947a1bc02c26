"""The runtime file: how every command and the user's code find the running `conveyor up`."""

from __future__ import annotations

import json
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor.core import runtime
from conveyor.core.preflight import require_task_modules
from conveyor.core.runtime import AlreadyRunning, Runtime, UpLock
from conveyor.core.settings import SettingsError, get_settings, load_settings, section
from conveyor.local.ports import choose_port

DATA_DIR = Path(".conveyor")


def a_runtime(data_dir: Path, **changes: object) -> Runtime:
    fields: dict[str, object] = {
        "pid": os.getpid(),
        "started_at": "2026-11-27T10:00:00+00:00",
        "data_dir": str(data_dir.resolve()),
        "redis_url": "redis://127.0.0.1:41234/0",
        "database_url": f"sqlite:///{(data_dir / 'conveyor.db').resolve()}",
        "api_url": "http://127.0.0.1:8123",
        "smtp": "127.0.0.1:1025",
        **changes,
    }
    return Runtime(**fields)  # type: ignore[arg-type]


@pytest.fixture
def running() -> Iterator[UpLock]:
    """A `conveyor up` of this directory, as far as the runtime file tells."""
    lock = UpLock.acquire(DATA_DIR)
    lock.publish(a_runtime(DATA_DIR))
    yield lock
    lock.release()


def test_unset_urls_come_from_the_running_system(running: UpLock) -> None:
    settings = load_settings()
    assert settings.redis == "redis://127.0.0.1:41234/0"
    assert settings.broker == "redis://127.0.0.1:41234/0"
    assert settings.database == f"sqlite:///{(DATA_DIR / 'conveyor.db').resolve()}"
    assert settings.source_of("redis_url") == f"found from `conveyor up`, pid {os.getpid()}"
    assert settings.runtime is not None
    assert settings.runtime.api_url == "http://127.0.0.1:8123"


def test_a_url_set_in_the_environment_wins(
    running: UpLock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONVEYOR_REDIS_URL", "redis://cache.internal:6379/2")
    settings = load_settings()
    assert settings.redis == "redis://cache.internal:6379/2"
    assert settings.source_of("redis_url") == "CONVEYOR_REDIS_URL"
    # The other URL, not set, still comes from the running system.
    assert settings.source_of("database_url").startswith("found from `conveyor up`")


def test_a_worker_finds_the_sandbox_gateway_up_started(monkeypatch: pytest.MonkeyPatch) -> None:
    from conveyor.workloads.payments.settings import SANDBOX_URL, PaymentsSettings

    lock = UpLock.acquire(DATA_DIR)
    try:
        lock.publish(a_runtime(DATA_DIR, urls={SANDBOX_URL: "http://127.0.0.1:8011"}))
        get_settings.cache_clear()
        assert section(PaymentsSettings).payments_gateway_url == "http://127.0.0.1:8011"
        # A URL set in the environment wins, as for Redis and the database.
        monkeypatch.setenv("CONVEYOR_PAYMENTS_GATEWAY_URL", "http://gateway.internal:9000")
        get_settings.cache_clear()
        assert section(PaymentsSettings).payments_gateway_url == "http://gateway.internal:9000"
    finally:
        lock.release()
    monkeypatch.delenv("CONVEYOR_PAYMENTS_GATEWAY_URL")
    get_settings.cache_clear()
    assert section(PaymentsSettings).payments_gateway_url == "http://127.0.0.1:8010"


def test_another_data_dir_finds_it_from_anywhere(
    running: UpLock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    with pytest.raises(SettingsError, match="no Conveyor running here"):
        _ = load_settings().redis
    monkeypatch.setenv("CONVEYOR_DATA_DIR", str(tmp_path / ".conveyor"))
    assert load_settings().redis == "redis://127.0.0.1:41234/0"


def test_a_second_up_in_the_same_directory_is_refused(running: UpLock) -> None:
    with pytest.raises(AlreadyRunning) as info:
        UpLock.acquire(DATA_DIR)
    assert info.value.pid == os.getpid()
    assert str(info.value) == f"pid {os.getpid()}, API at http://127.0.0.1:8123"
    # The refused attempt leaves the running system's file alone.
    assert runtime.read(DATA_DIR) == a_runtime(DATA_DIR)


def test_a_starting_up_is_refused_before_its_runtime_file_exists() -> None:
    lock = UpLock.acquire(DATA_DIR)
    try:
        with pytest.raises(AlreadyRunning, match=f"pid {os.getpid()}, still starting"):
            UpLock.acquire(DATA_DIR)
    finally:
        lock.release()


def test_a_clean_stop_removes_the_file_and_frees_the_directory() -> None:
    lock = UpLock.acquire(DATA_DIR)
    lock.publish(a_runtime(DATA_DIR))
    lock.release()
    assert not (DATA_DIR / runtime.RUNTIME_FILE).exists()
    assert runtime.read(DATA_DIR) is None
    UpLock.acquire(DATA_DIR).release()


def test_a_crashed_runs_file_is_stale_and_ignored() -> None:
    # A runtime file nobody holds the lock for: its `conveyor up` died without cleaning up.
    DATA_DIR.mkdir()
    (DATA_DIR / runtime.RUNTIME_FILE).write_text(json.dumps(a_runtime(DATA_DIR).__dict__))
    assert runtime.read(DATA_DIR) is None
    with pytest.raises(SettingsError, match="no Conveyor running here"):
        _ = load_settings().redis
    lock = UpLock.acquire(DATA_DIR)
    assert not (DATA_DIR / runtime.RUNTIME_FILE).exists()
    lock.release()


def test_the_runtime_file_is_private(running: UpLock) -> None:
    assert (DATA_DIR / runtime.RUNTIME_FILE).stat().st_mode & 0o077 == 0


def test_a_pinned_port_in_use_names_its_setting() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(SettingsError) as info:
            choose_port("CONVEYOR_API_PORT", "127.0.0.1", port, pinned=True)
        assert str(info.value) == (
            f"port {port} on 127.0.0.1 is already in use (CONVEYOR_API_PORT={port}); stop what "
            "listens there, or set CONVEYOR_API_PORT to a free port"
        )
        # A port only the default asked for gives way to a free one.
        other = choose_port("CONVEYOR_API_PORT", "127.0.0.1", port, pinned=False)
        assert other != port


def test_a_typo_in_task_modules_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "billing_tasks.py").write_text("VALUE = 1\n")
    monkeypatch.setenv("CONVEYOR_TASK_MODULES", "billing_tasks")
    get_settings.cache_clear()
    require_task_modules()
    assert "billing_tasks" in sys.modules
    monkeypatch.setenv("CONVEYOR_TASK_MODULES", "billing_tasks,biling.tasks")
    get_settings.cache_clear()
    with pytest.raises(SettingsError) as info:
        require_task_modules()
    assert str(info.value) == (
        f"CONVEYOR_TASK_MODULES: no module 'biling.tasks' importable from {tmp_path}; check "
        "the spelling, and run from the folder that holds it or add that folder to PYTHONPATH"
    )


def test_the_banner_never_shows_a_password(capsys: pytest.CaptureFixture[str]) -> None:
    from conveyor.cli.up import Plan, _banner
    from conveyor.core.settings import Settings

    settings = Settings(
        database_url="postgresql://app:hunter2@db/conveyor",
        redis_url="redis://:hunter2@cache:6379/0",
        broker_url="amqp://app:hunter2@rabbit:5672/prod",
    )
    runtime_of_up = a_runtime(DATA_DIR, redis_url=settings.redis, database_url=settings.database)
    _banner(settings, runtime_of_up, Plan(api_port=8123, sink_port=1025, gateway_port=None), "x")
    shown = capsys.readouterr().err
    assert "Conveyor is up" in shown
    assert "postgresql+psycopg://app:***@db/conveyor" in shown
    assert "Broker    amqp://app:***@rabbit:5672/prod" in shown
    assert "hunter2" not in shown


def test_a_task_module_that_fails_to_import_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "broken_tasks.py").write_text("VALUE = 1\nimport nonexistent_pkg_xyz\n")
    monkeypatch.setenv("CONVEYOR_TASK_MODULES", "broken_tasks")
    get_settings.cache_clear()
    with pytest.raises(SettingsError) as info:
        require_task_modules()
    assert str(info.value) == (
        f"CONVEYOR_TASK_MODULES: importing 'broken_tasks' failed at "
        f"{tmp_path / 'broken_tasks.py'}:2: ModuleNotFoundError: "
        "No module named 'nonexistent_pkg_xyz'"
    )
