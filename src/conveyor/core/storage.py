"""Where workloads keep files (uploads, attachments, image variants): a small protocol.

Keys are relative, slash-separated names such as `images/<id>/thumb.webp`. Implementations
write atomically, so a reader never sees half a file, and a crashed writer leaves no partial
object under the key.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

from pydantic import SecretStr

from conveyor.core.extras import require
from conveyor.core.private import private_dir
from conveyor.core.settings import Settings, get_settings

_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._=-]*(/[A-Za-z0-9][A-Za-z0-9._=-]*)*")
MAX_KEY_LENGTH = 512


class StorageError(Exception):
    """A key that cannot be stored or found."""


class NotFound(StorageError):
    pass


def check_key(key: str) -> str:
    """Refuse keys that could escape the storage root or confuse an object store."""
    if len(key) > MAX_KEY_LENGTH or not _KEY.fullmatch(key) or ".." in key.split("/"):
        raise StorageError(f"invalid storage key {key!r}")
    return key


class Storage(Protocol):
    def put(self, key: str, data: bytes, content_type: str) -> None: ...

    def put_file(self, key: str, source: Path, content_type: str) -> None:
        """Store a file from disk without holding it in memory (large reports)."""
        ...

    def get(self, key: str) -> bytes: ...

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None: ...

    def size(self, key: str) -> int: ...

    def url(self, key: str) -> str | None:
        """A URL a client can fetch directly, or None when only the API serves the file."""
        ...


class LocalStorage:
    """Files under a directory; the API serves them, so `url` is None. Directories it
    creates are 0700 and files 0600: uploads are their owners' business only."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, key: str) -> Path:
        return self.root / check_key(key)

    def put(self, key: str, data: bytes, content_type: str) -> None:
        target = self.path(key)
        private_dir(target.parent)
        # Write beside the target and rename: readers see the old file or the new, never half.
        # mkstemp makes the file 0600, and the rename keeps that.
        fd, temp = tempfile.mkstemp(dir=target.parent, prefix=".partial-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(temp, target)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise

    def put_file(self, key: str, source: Path, content_type: str) -> None:
        target = self.path(key)
        private_dir(target.parent)
        fd, temp = tempfile.mkstemp(dir=target.parent, prefix=".partial-")
        try:
            with os.fdopen(fd, "wb") as handle, source.open("rb") as reader:
                shutil.copyfileobj(reader, handle, 1_048_576)
            os.replace(temp, target)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise

    def get(self, key: str) -> bytes:
        try:
            return self.path(key).read_bytes()
        except FileNotFoundError:
            raise NotFound(key) from None

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def size(self, key: str) -> int:
        try:
            return self.path(key).stat().st_size
        except FileNotFoundError:
            raise NotFound(key) from None

    def url(self, key: str) -> str | None:
        return None


class S3Storage:
    """Objects in an S3 bucket (AWS, or any S3-compatible server through `endpoint_url`).

    A put is one PutObject, which S3 makes visible whole or not at all. `url` is a
    presigned GET URL valid `presign_seconds`, or, with `public_url` (a CDN or a public
    bucket), a plain URL under it.
    """

    def __init__(
        self,
        bucket: str,
        *,
        prefix: str = "",
        client: Any = None,
        public_url: str | None = None,
        presign_seconds: int = 3600,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.client = client
        self.public_url = public_url.rstrip("/") if public_url else None
        self.presign_seconds = presign_seconds

    @classmethod
    def from_settings(cls, settings: Settings) -> S3Storage:
        boto3 = require_s3()
        from botocore.config import Config

        if not settings.s3_bucket:
            raise StorageError("CONVEYOR_S3_BUCKET must be set when CONVEYOR_STORAGE_BACKEND=s3")
        client = boto3.client(
            "s3",
            endpoint_url=settings.s3_endpoint_url,
            region_name=settings.s3_region,
            aws_access_key_id=_secret(settings.s3_access_key_id),
            aws_secret_access_key=_secret(settings.s3_secret_access_key),
            config=Config(
                retries={"max_attempts": 3, "mode": "standard"}, signature_version="s3v4"
            ),
        )
        return cls(
            settings.s3_bucket,
            prefix=settings.s3_prefix,
            client=client,
            public_url=settings.s3_public_url,
            presign_seconds=settings.s3_presign_seconds,
        )

    def object_key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def put(self, key: str, data: bytes, content_type: str) -> None:
        self.client.put_object(
            Bucket=self.bucket, Key=self.object_key(key), Body=data, ContentType=content_type
        )

    def put_file(self, key: str, source: Path, content_type: str) -> None:
        # upload_file streams in parts; the object appears whole when the upload completes.
        self.client.upload_file(
            str(source), self.bucket, self.object_key(key), ExtraArgs={"ContentType": content_type}
        )

    def get(self, key: str) -> bytes:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self.object_key(key))
        except self.client.exceptions.NoSuchKey:
            raise NotFound(key) from None
        body: bytes = response["Body"].read()
        return body

    def _head(self, key: str) -> dict[str, Any] | None:
        from botocore.exceptions import ClientError

        try:
            head: dict[str, Any] = self.client.head_object(
                Bucket=self.bucket, Key=self.object_key(key)
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in {"404", "NoSuchKey", "NotFound"}:
                return None
            raise
        return head

    def exists(self, key: str) -> bool:
        return self._head(key) is not None

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self.object_key(key))

    def size(self, key: str) -> int:
        head = self._head(key)
        if head is None:
            raise NotFound(key)
        return int(head["ContentLength"])

    def url(self, key: str) -> str | None:
        name = self.object_key(key)
        if self.public_url:
            return f"{self.public_url}/{name}"
        url: str = self.client.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.bucket, "Key": name},
            ExpiresIn=self.presign_seconds,
        )
        return url


def _secret(value: SecretStr | None) -> str | None:
    return value.get_secret_value() if value is not None else None


def require_s3() -> ModuleType:
    """boto3, or one line naming the extra that installs it."""
    return require("boto3", extra="s3", what="CONVEYOR_STORAGE_BACKEND=s3")


def get_storage(settings: Settings | None = None) -> Storage:
    """The configured storage (`CONVEYOR_STORAGE_BACKEND`)."""
    settings = settings or get_settings()
    if settings.storage_backend == "s3":
        return S3Storage.from_settings(settings)
    return LocalStorage(settings.storage_dir or settings.data_dir / "files")
