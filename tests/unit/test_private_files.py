"""What Conveyor creates under its data directory is its owner's only: the SQLite ledger with
its WAL and shared-memory files, the data directory itself, and stored uploads."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from conveyor.core import db
from conveyor.core.migrate import upgrade
from conveyor.core.private import private_dir
from conveyor.core.settings import Settings
from conveyor.core.storage import LocalStorage


@pytest.fixture(autouse=True)
def usual_umask() -> Iterator[None]:
    # The common default: without care, files would come out 0644 and directories 0755.
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_sqlite_ledger_and_its_wal_and_shm_files_are_private(tmp_path: Path) -> None:
    data = tmp_path / "home" / ".conveyor"
    database = data / "conveyor.db"
    engine = db.build_engine(f"sqlite:///{database}")
    try:
        with engine.begin() as connection:
            connection.execute(text("CREATE TABLE t (x TEXT)"))
            connection.execute(text("INSERT INTO t VALUES ('secret')"))
        with engine.connect() as connection:
            # An open connection in WAL mode keeps both side files in place.
            connection.execute(text("SELECT * FROM t")).all()
            side = [Path(f"{database}-wal"), Path(f"{database}-shm")]
            assert all(path.exists() for path in side)
            assert {path.name: mode(path) for path in [database, *side]} == {
                "conveyor.db": 0o600,
                "conveyor.db-wal": 0o600,
                "conveyor.db-shm": 0o600,
            }
    finally:
        engine.dispose()
    assert mode(data) == 0o700
    assert mode(data.parent) == 0o700  # created for it too


def test_migrations_create_a_private_database(tmp_path: Path) -> None:
    database = tmp_path / "fresh" / "ledger.db"
    upgrade(Settings(database_url=f"sqlite:///{database}"), revision="0001")
    assert mode(database) == 0o600
    assert mode(database.parent) == 0o700


def test_stored_files_and_their_directories_are_private(tmp_path: Path) -> None:
    root = tmp_path / "data" / "files"
    storage = LocalStorage(root)
    storage.put("images/abc/original.jpg", b"\xff\xd8\xff", "image/jpeg")
    storage.put("images/abc/thumbnail.webp", b"RIFF", "image/webp")
    assert mode(root / "images/abc/original.jpg") == 0o600
    assert mode(root / "images/abc/thumbnail.webp") == 0o600
    for directory in (root, root / "images", root / "images/abc"):
        assert mode(directory) == 0o700


def test_existing_directories_are_left_as_they_are(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    private_dir(shared / "mine")
    assert mode(shared) == 0o755
    assert mode(shared / "mine") == 0o700
