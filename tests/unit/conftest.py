"""Shared fixtures for unit tests: a clean environment and a throwaway SQLite ledger."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery._state import _set_task_join_will_block  # type: ignore[attr-defined]
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from conveyor.core import db, operations_models, redis_client
from conveyor.core.models import Base
from conveyor.core.settings import PLATFORM_URLS, get_settings

# Registers the operations tables on Base.metadata for create_all.
assert operations_models.JOB_STATS is not None


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No CONVEYOR_* variable (nor REDIS_URL, DATABASE_URL) from the caller's shell, no stray
    `.env`, no cached settings."""
    for name in list(os.environ):
        if name.upper().startswith("CONVEYOR_") or name in PLATFORM_URLS.values():
            monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()
    db.dispose_all()
    # An API app made by a test marks this process as one that never waits for results,
    # and fails fast for a while after a Redis it could not reach (127.0.0.1:1 in tests).
    _set_task_join_will_block(False)
    monkeypatch.setattr(redis_client, "_fail_fast", False)
    monkeypatch.setattr(redis_client, "_outage_until", 0.0)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = db.build_engine("sqlite:///" + (tmp_path / "ledger.db").as_posix())
    Base.metadata.create_all(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def session(engine: Engine) -> Iterator[Session]:
    with Session(engine) as session:
        yield session
