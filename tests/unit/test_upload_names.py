"""Upload names as hostile clients send them, through the real multipart parser: what
`POST /api/v1/files` stores and echoes is a safe display name."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from conveyor.api.app import create_app
from conveyor.core import api_keys, db
from conveyor.core.filenames import MAX_DISPLAY_NAME
from conveyor.core.models import Base
from conveyor.core.settings import get_settings
from conveyor.workloads.email.models import StoredFile

BOUNDARY = "conveyor-test-boundary"


def multipart(filename: bytes, data: bytes, content_type: str = "text/plain") -> bytes:
    """A body with the name's raw bytes in it: clients' encoders would escape them."""
    return (
        f"--{BOUNDARY}\r\n".encode()
        + b'Content-Disposition: form-data; name="file"; filename="'
        + filename
        + b'"\r\n'
        + f"Content-Type: {content_type}\r\n\r\n".encode()
        + data
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )


@pytest.fixture
def client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[TestClient, str]]:
    monkeypatch.setenv("CONVEYOR_DATABASE_URL", f"sqlite:///{tmp_path / 'api.db'}")
    monkeypatch.setenv("CONVEYOR_REDIS_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setenv("CONVEYOR_API_RATE_LIMIT_PER_MINUTE", "0")
    # Limits that would reach for Redis, which is not there: a miss would read as an outage.
    monkeypatch.setenv("CONVEYOR_API_AUTH_FAILURES_PER_MINUTE", "0")
    get_settings.cache_clear()
    Base.metadata.create_all(db.get_engine())
    with db.session_scope() as session:
        key = api_keys.create_key(session, "alice", owner="alice").plaintext
    with TestClient(create_app()) as test_client:
        yield test_client, key


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"../../etc/passwd", "passwd"),
        (b"..\\..\\windows\\win.ini", "win.ini"),
        (b"report\x00.exe.txt", "report.exe.txt"),
        (b"bell\x07\x1b[31mred.txt", "bell[31mred.txt"),
        ("invoice\u202etxt.exe".encode(), "invoicetxt.exe"),
        (b"..", "attachment"),
    ],
)
def test_files_keep_a_safe_display_name(
    client: tuple[TestClient, str], raw: bytes, expected: str
) -> None:
    test_client, key = client
    response = test_client.post(
        "/api/v1/files",
        content=multipart(raw, b"hello"),
        headers={
            "Authorization": f"Bearer {key}",
            "Content-Type": f"multipart/form-data; boundary={BOUNDARY}",
        },
    )
    assert response.status_code == 201, response.text
    assert response.json()["filename"] == expected
    with db.session_scope() as session:
        stored = session.get(StoredFile, response.json()["id"])
        assert stored is not None
        assert stored.filename == expected


def test_a_very_long_name_is_cut_keeping_its_extension(client: tuple[TestClient, str]) -> None:
    test_client, key = client
    response = test_client.post(
        "/api/v1/files",
        content=multipart(b"n" * 3_000 + b".pdf", b"%PDF-1.7", "application/pdf"),
        headers={
            "Authorization": f"Bearer {key}",
            "Content-Type": f"multipart/form-data; boundary={BOUNDARY}",
        },
    )
    assert response.status_code == 201, response.text
    name = response.json()["filename"]
    assert len(name) == MAX_DISPLAY_NAME
    assert name.endswith("n.pdf")
