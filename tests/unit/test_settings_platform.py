"""REDIS_URL and DATABASE_URL, as hosting platforms inject them: used when CONVEYOR_* is unset."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor.cli.system import describe
from conveyor.core.runtime import UpLock
from conveyor.core.settings import SettingsError, load_settings
from tests.unit.test_runtime import a_runtime

DATA_DIR = Path(".conveyor")


@pytest.fixture
def running() -> Iterator[UpLock]:
    """A `conveyor up` of this directory, as far as the runtime file tells."""
    lock = UpLock.acquire(DATA_DIR)
    lock.publish(a_runtime(DATA_DIR))
    yield lock
    lock.release()


def test_redis_url_is_used_when_conveyor_redis_url_is_unset(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REDIS_URL", "rediss://:secret@cache.internal:6380/0")
    settings = load_settings()
    assert settings.redis == "rediss://:secret@cache.internal:6380/0"
    assert settings.broker == settings.result_backend == settings.redis
    assert settings.source_of("redis_url") == "REDIS_URL"
    assert settings.source_of("database_url") == "default"


@pytest.mark.parametrize(
    ("injected", "effective"),
    [
        ("postgres://u:pw@db.internal:5432/app", "postgresql+psycopg://u:pw@db.internal:5432/app"),
        ("postgresql://u:pw@db.internal/app", "postgresql+psycopg://u:pw@db.internal/app"),
        ("postgresql+psycopg://u@db.internal/app", "postgresql+psycopg://u@db.internal/app"),
        ("sqlite:////var/lib/app.db", "sqlite:////var/lib/app.db"),
    ],
)
def test_database_url_is_used_with_the_psycopg3_driver(
    monkeypatch: pytest.MonkeyPatch, injected: str, effective: str
) -> None:
    monkeypatch.setenv("DATABASE_URL", injected)
    settings = load_settings()
    assert settings.database == effective
    assert settings.source_of("database_url") == "DATABASE_URL"


def test_conveyor_names_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://platform:6379/0")
    monkeypatch.setenv("DATABASE_URL", "postgres://platform/app")
    monkeypatch.setenv("CONVEYOR_REDIS_URL", "redis://own:6379/4")
    monkeypatch.setenv("CONVEYOR_DATABASE_URL", "postgresql://own/conveyor")
    settings = load_settings()
    assert settings.redis == "redis://own:6379/4"
    assert settings.database == "postgresql+psycopg://own/conveyor"
    assert settings.source_of("redis_url") == "CONVEYOR_REDIS_URL"
    assert settings.source_of("database_url") == "CONVEYOR_DATABASE_URL"


def test_each_url_falls_back_on_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://platform:6379/0")
    monkeypatch.setenv("DATABASE_URL", "postgres://platform/app")
    monkeypatch.setenv("CONVEYOR_REDIS_URL", "redis://own:6379/4")
    settings = load_settings()
    assert settings.redis == "redis://own:6379/4"
    assert settings.database == "postgresql+psycopg://platform/app"
    assert settings.source_of("database_url") == "DATABASE_URL"


def test_platform_urls_win_over_a_running_up(
    running: UpLock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://platform:6379/0")
    settings = load_settings()
    assert settings.redis == "redis://platform:6379/0"
    assert settings.source_of("redis_url") == "REDIS_URL"
    # The one left unset still comes from the running system.
    assert settings.database == f"sqlite:///{(DATA_DIR / 'conveyor.db').resolve()}"
    assert settings.source_of("database_url") == f"found from `conveyor up`, pid {os.getpid()}"


def test_status_names_the_variable_and_hides_the_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://:hunter2@cache:6379/0")
    monkeypatch.setenv("DATABASE_URL", "postgres://app:hunter2@db/app")
    rows = dict(describe(load_settings()))
    assert rows["Redis"].endswith("(REDIS_URL)")
    assert rows["Database"].endswith("(DATABASE_URL)")
    assert "hunter2" not in rows["Redis"] + rows["Database"]


@pytest.mark.parametrize("name", ["REDIS_URL", "DATABASE_URL"])
def test_an_empty_platform_url_counts_as_unset(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setenv(name, "  ")
    settings = load_settings()
    assert settings.redis_url is None
    assert settings.database_url is None
    with pytest.raises(SettingsError, match="CONVEYOR_REDIS_URL"):
        _ = settings.redis


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        (
            "REDIS_URL",
            "http://cache:6379",
            "invalid configuration: REDIS_URL: must be a redis://, rediss:// or sentinel:// URL; "
            "or set CONVEYOR_REDIS_URL, which wins",
        ),
        (
            "DATABASE_URL",
            "mysql://app@db/app",
            "invalid configuration: DATABASE_URL: must start with sqlite:/// or postgresql:// "
            "(got mysql://); or set CONVEYOR_DATABASE_URL, which wins",
        ),
    ],
)
def test_a_bad_platform_url_is_one_line_naming_it(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert str(info.value) == expected


def test_a_bad_platform_url_is_ignored_when_conveyor_names_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DATABASE_URL", "mysql://app@db/app")
    monkeypatch.setenv("CONVEYOR_DATABASE_URL", "sqlite:////var/lib/conveyor.db")
    assert load_settings().database == "sqlite:////var/lib/conveyor.db"
