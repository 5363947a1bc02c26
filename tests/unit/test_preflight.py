"""Start-up checks: one actionable line, never a password."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from conveyor.core import preflight
from conveyor.core.preflight import require_database
from conveyor.core.redaction import safe_url
from conveyor.core.settings import Settings, SettingsError, get_settings


@pytest.mark.parametrize(
    ("url", "safe"),
    [
        ("postgresql://app:s3cret@db:5432/conveyor", "postgresql://app:***@db:5432/conveyor"),
        ("postgresql+psycopg://app:s3cret@db/x", "postgresql+psycopg://app:***@db/x"),
        ("redis://:s3cret@cache:6379/0", "redis://:***@cache:6379/0"),
        ("rediss://default:s3cret@cache:6380/1", "rediss://default:***@cache:6380/1"),
        ("postgresql://app:p@ss:w@rd@db/x", "postgresql://app:***@db/x"),
        ("postgresql://app@db/x", "postgresql://app@db/x"),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("sqlite:///var/lib/conveyor.db", "sqlite:///var/lib/conveyor.db"),
        ("not a url", "not a url"),
    ],
)
def test_safe_url_hides_only_the_password(url: str, safe: str) -> None:
    assert safe_url(url) == safe
    for secret in ("s3cret", "p@ss", "w@rd"):
        assert secret not in safe_url(url)


def one_line_error(settings: Settings | None = None) -> str:
    with pytest.raises(SettingsError) as info:
        require_database(settings)
    message = str(info.value)
    assert "\n" not in message
    assert info.value.__cause__ is None
    return message


def test_a_usable_sqlite_database_passes(tmp_path: Path) -> None:
    path = tmp_path / "new" / "dir" / "conveyor.db"
    require_database(Settings(database_url="sqlite:///" + path.as_posix()))
    assert path.exists()
    with sqlite3.connect(path) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_a_sqlite_path_that_is_a_directory_is_one_line(tmp_path: Path) -> None:
    message = one_line_error(Settings(database_url="sqlite:///" + tmp_path.as_posix()))
    assert message.startswith("cannot connect to the database (sqlite:///")
    assert "unable to open database file" in message


def test_a_sqlite_path_that_cannot_be_created_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    url = "sqlite:///" + (blocker / "sub" / "conveyor.db").as_posix()
    message = one_line_error(Settings(database_url=url))
    assert "cannot" in message


def test_an_unreachable_postgresql_is_one_line_without_the_password() -> None:
    # Port 1 refuses at once: no server is involved and the test does not wait.
    settings = Settings(database_url="postgresql://u:secret@127.0.0.1:1/x")
    message = one_line_error(settings)
    assert message.startswith("cannot connect to the database (")
    assert "postgresql+psycopg://u:***@127.0.0.1:1/x" in message
    assert "secret" not in message
    assert "refused" in message.lower()


def test_a_postgresql_url_with_a_bad_port_is_one_line() -> None:
    message = one_line_error(Settings(database_url="postgresql://u:secret@127.0.0.1:abc/x"))
    assert "CONVEYOR_DATABASE_URL" in message
    assert "secret" not in message


def test_require_database_reads_the_environment_by_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CONVEYOR_DATABASE_URL", "postgresql://env-user:envpass@127.0.0.1:1/x")
    get_settings.cache_clear()
    message = one_line_error()
    assert "env-user:***@127.0.0.1:1" in message
    assert "envpass" not in message


def test_task_modules_are_checked_before_redis_is_known_with_a_broker_of_its_own(
    tmp_path: Path,
) -> None:
    """`conveyor up` with only CONVEYOR_BROKER_URL set checks the task modules before it
    starts its embedded Redis: the missing Redis URL is not an error yet."""
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        broker_url="amqp://guest:guest@127.0.0.1:5672//",
        data_dir=tmp_path,
    )
    with pytest.raises(SettingsError):
        _ = settings.result_backend  # what configuring the Celery app would need
    preflight.require_task_modules(settings)  # returns: nothing to check against yet
