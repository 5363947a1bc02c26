"""Local file storage: round trips, atomic replacement and keys that cannot escape the root."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor.core.storage import LocalStorage, NotFound, StorageError, check_key


def test_put_then_get_returns_the_same_bytes(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    storage.put("images/abc/thumb.webp", b"\x00\x01data", "image/webp")
    assert storage.get("images/abc/thumb.webp") == b"\x00\x01data"
    assert storage.exists("images/abc/thumb.webp")
    assert storage.size("images/abc/thumb.webp") == 6
    assert storage.url("images/abc/thumb.webp") is None


def test_put_replaces_and_leaves_no_partial_files(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    storage.put("a/b.bin", b"old", "application/octet-stream")
    storage.put("a/b.bin", b"new", "application/octet-stream")
    assert storage.get("a/b.bin") == b"new"
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["b.bin"]


def test_put_file_copies_a_file_in_and_leaves_no_partial_files(tmp_path: Path) -> None:
    source = tmp_path / "report.csv"
    source.write_bytes(b"a,b\n" * 300_000)
    storage = LocalStorage(tmp_path / "root")
    storage.put_file("reports/r1/report.csv", source, "text/csv")
    assert storage.get("reports/r1/report.csv") == source.read_bytes()
    assert [p.name for p in (tmp_path / "root" / "reports" / "r1").iterdir()] == ["report.csv"]


def test_missing_keys_raise_not_found_and_delete_is_idempotent(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    with pytest.raises(NotFound):
        storage.get("nope.txt")
    with pytest.raises(NotFound):
        storage.size("nope.txt")
    storage.put("x.txt", b"x", "text/plain")
    storage.delete("x.txt")
    storage.delete("x.txt")
    assert not storage.exists("x.txt")


@pytest.mark.parametrize(
    "key",
    ["../etc/passwd", "/etc/passwd", "a/../../b", "a//b", "", ".hidden", "a/./b", "a\\b", "a b"],
)
def test_keys_that_could_escape_or_confuse_are_refused(tmp_path: Path, key: str) -> None:
    with pytest.raises(StorageError):
        check_key(key)
    with pytest.raises(StorageError):
        LocalStorage(tmp_path).put(key, b"x", "text/plain")


# --- S3, against moto's S3-compatible server on loopback (real HTTP, real boto3) ---

import httpx  # noqa: E402
from moto.server import ThreadedMotoServer  # noqa: E402

from conveyor.core.settings import Settings  # noqa: E402
from conveyor.core.storage import S3Storage, get_storage  # noqa: E402


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_settings(s3_endpoint: str, tmp_path: Path) -> Settings:
    settings = Settings(
        data_dir=tmp_path,
        storage_backend="s3",
        s3_bucket="conveyor-test",
        s3_prefix="tenant-a/",
        s3_endpoint_url=s3_endpoint,
        s3_region="us-east-1",
        s3_access_key_id="testing",
        s3_secret_access_key="testing",
    )
    storage = get_storage(settings)
    assert isinstance(storage, S3Storage)
    if not any(b["Name"] == "conveyor-test" for b in storage.client.list_buckets()["Buckets"]):
        storage.client.create_bucket(Bucket="conveyor-test")
    return settings


def test_s3_round_trip_under_the_prefix(s3_settings: Settings) -> None:
    storage = get_storage(s3_settings)
    assert isinstance(storage, S3Storage)
    storage.put("images/abc/thumb.webp", b"RIFF....WEBP", "image/webp")
    assert storage.get("images/abc/thumb.webp") == b"RIFF....WEBP"
    assert storage.exists("images/abc/thumb.webp")
    assert storage.size("images/abc/thumb.webp") == 12
    head = storage.client.head_object(Bucket="conveyor-test", Key="tenant-a/images/abc/thumb.webp")
    assert head["ContentType"] == "image/webp"
    storage.delete("images/abc/thumb.webp")
    storage.delete("images/abc/thumb.webp")
    assert not storage.exists("images/abc/thumb.webp")
    with pytest.raises(NotFound):
        storage.get("images/abc/thumb.webp")
    with pytest.raises(NotFound):
        storage.size("images/abc/thumb.webp")


def test_s3_put_file_uploads_with_the_content_type(s3_settings: Settings, tmp_path: Path) -> None:
    storage = get_storage(s3_settings)
    assert isinstance(storage, S3Storage)
    source = tmp_path / "report.pdf"
    source.write_bytes(b"%PDF-1.4 report")
    storage.put_file("reports/r1/report.pdf", source, "application/pdf")
    assert storage.get("reports/r1/report.pdf") == b"%PDF-1.4 report"
    head = storage.client.head_object(Bucket="conveyor-test", Key="tenant-a/reports/r1/report.pdf")
    assert head["ContentType"] == "application/pdf"


def test_s3_presigned_url_fetches_the_object(s3_settings: Settings) -> None:
    storage = get_storage(s3_settings)
    storage.put("a/b.jpg", b"\xff\xd8\xffjpeg", "image/jpeg")
    url = storage.url("a/b.jpg")
    assert url is not None
    assert "X-Amz-Signature=" in url
    response = httpx.get(url)
    assert response.status_code == 200
    assert response.content == b"\xff\xd8\xffjpeg"


def test_s3_public_url_and_key_checks(s3_settings: Settings) -> None:
    public = get_storage(s3_settings.model_copy(update={"s3_public_url": "https://cdn.example/"}))
    assert public.url("a/b.jpg") == "https://cdn.example/tenant-a/a/b.jpg"
    with pytest.raises(StorageError):
        public.put("../escape", b"x", "text/plain")


def test_s3_without_a_bucket_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="CONVEYOR_S3_BUCKET"):
        get_storage(Settings(data_dir=tmp_path, storage_backend="s3"))
