"""Upload checks, before any worker sees the file: what it really is, how big it claims to
be, and whether it decodes to the end.

The type comes from the file's first bytes, never from its name; a name or content type
that claims another image type is refused too, since that is what a disguised file looks
like. Width, height and pixel count are read from the header and checked before a single
pixel is decoded, so a small file declaring a huge image (a decompression bomb) costs
nothing. Only then is the file decoded, shrunk on load, to catch truncation and corruption.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath

import pyvips

from conveyor.workloads.images.vips import LOADER_NICKNAMES

MEDIA_TYPES: dict[str, str] = {
    "jpeg": "image/jpeg",
    "png": "image/png",
    "webp": "image/webp",
    "avif": "image/avif",
}
_EXTENSIONS: dict[str, str] = {
    ".jpg": "jpeg",
    ".jpeg": "jpeg",
    ".jpe": "jpeg",
    ".png": "png",
    ".webp": "webp",
    ".avif": "avif",
    ".gif": "gif",
    ".svg": "svg",
    ".tif": "tiff",
    ".tiff": "tiff",
    ".heic": "heic",
    ".bmp": "bmp",
}
_DECLARED_TYPES: dict[str, str] = {
    "image/jpeg": "jpeg",
    "image/jpg": "jpeg",
    "image/pjpeg": "jpeg",
    "image/png": "png",
    "image/webp": "webp",
    "image/avif": "avif",
    "image/gif": "gif",
    "image/svg+xml": "svg",
    "image/tiff": "tiff",
    "image/heic": "heic",
    "image/bmp": "bmp",
}
SUPPORTED = ", ".join(name.upper() for name in MEDIA_TYPES)


class RejectedImage(Exception):
    """An upload refused, with the HTTP status and a message naming the field."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Limits:
    max_bytes: int
    max_width: int
    max_height: int
    max_pixels: int


@dataclass(frozen=True)
class Inspected:
    format: str
    width: int
    height: int

    @property
    def media_type(self) -> str:
        return MEDIA_TYPES[self.format]


def _avif_brands(data: bytes) -> set[bytes]:
    """The major and compatible brands of an ISO-BMFF `ftyp` box."""
    if len(data) < 16 or data[4:8] != b"ftyp":
        return set()
    size = min(int.from_bytes(data[0:4], "big"), len(data), 256)
    brands = {data[8:12]}
    brands.update(data[offset : offset + 4] for offset in range(16, size - 3, 4))
    return brands


def sniff(data: bytes) -> str | None:
    """The supported format these bytes are, or None."""
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if len(data) >= 12 and data[0:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if _avif_brands(data) & {b"avif", b"avis"}:
        return "avif"
    return None


def describe_unsupported(data: bytes) -> str:
    """A person's name for what an unsupported upload looks like."""
    head = data[:512].lstrip().lower()
    if head.startswith((b"<?xml", b"<svg")) or b"<svg" in head:
        return "an SVG document"
    if head.startswith((b"<!doctype html", b"<html", b"<head", b"<body", b"<script")):
        return "an HTML document"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "a GIF image"
    if data.startswith(b"%PDF"):
        return "a PDF document"
    if data.startswith((b"II*\x00", b"MM\x00*")):
        return "a TIFF image"
    if data.startswith(b"BM"):
        return "a BMP image"
    if _avif_brands(data):
        return "a HEIF/MP4 file that is not AVIF"
    return "not an image format we recognise"


def declared_format(filename: str | None, content_type: str | None) -> tuple[str, str] | None:
    """(what the client claims, where it claims it) from the name, else the content type."""
    suffix = PurePosixPath(filename or "").suffix.lower()
    if suffix in _EXTENSIONS:
        return _EXTENSIONS[suffix], f"name {filename!r}"
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media in _DECLARED_TYPES:
        return _DECLARED_TYPES[media], f"content type {media!r}"
    return None


def inspect_upload(
    data: bytes,
    limits: Limits,
    *,
    filename: str | None = None,
    content_type: str | None = None,
    field: str = "file",
    decode_check: bool = True,
) -> Inspected:
    """Check an upload; RejectedImage (413, 415 or 422) explains what is wrong with it."""
    if len(data) > limits.max_bytes:
        raise RejectedImage(
            413, f"{field}: {len(data)} bytes is over the limit of {limits.max_bytes} bytes"
        )
    if not data:
        raise RejectedImage(422, f"{field}: the file is empty")
    found = sniff(data)
    if found is None:
        raise RejectedImage(
            415, f"{field}: {describe_unsupported(data)}; supported formats are {SUPPORTED}"
        )
    claim = declared_format(filename, content_type)
    if claim is not None and claim[0] != found:
        claimed, where = claim
        raise RejectedImage(
            422,
            f"{field}: the content is {found.upper()} but its {where} says "
            f"{claimed.upper()}; send the file under its real type",
        )
    width, height = _header_size(data, found, field)
    _check_dimensions(width, height, limits, field)
    if decode_check:
        _check_decodes(data, field)
    return Inspected(format=found, width=width, height=height)


def _header_size(data: bytes, found: str, field: str) -> tuple[int, int]:
    try:
        # Reads the header only: no pixel is decoded here.
        header = pyvips.Image.new_from_buffer(data, "", access="sequential")
        loader = str(header.get("vips-loader"))
        width, height = int(header.width), int(header.height)
        if header.get_typeof("orientation") and int(header.get("orientation")) in (5, 6, 7, 8):
            width, height = height, width  # stored on its side; shown upright
    except pyvips.Error as exc:
        raise RejectedImage(
            422, f"{field}: not a readable {found.upper()} file ({_why(exc)})"
        ) from None
    if loader != LOADER_NICKNAMES[found]:
        raise RejectedImage(422, f"{field}: the content does not decode as {found.upper()}")
    return width, height


def _check_dimensions(width: int, height: int, limits: Limits, field: str) -> None:
    if width < 1 or height < 1:
        raise RejectedImage(422, f"{field}: the image declares no pixels ({width}x{height})")
    if width > limits.max_width or height > limits.max_height:
        raise RejectedImage(
            422,
            f"{field}: the image is {width}x{height} pixels; the limit is "
            f"{limits.max_width}x{limits.max_height}",
        )
    if width * height > limits.max_pixels:
        raise RejectedImage(
            422,
            f"{field}: the image has {width * height} pixels; the limit is {limits.max_pixels}",
        )


def _check_decodes(data: bytes, field: str) -> None:
    """Decode every byte, shrunk on load (cheap for JPEG, WebP and AVIF), failing on the
    first warning instead of filling in grey.

    A JPEG cut short and closed with an end marker only warns ("premature end of data
    segment"), so failing on truncation alone lets it through. A file whose only fault is
    one of the harmless JPEG quirks below is decoded again, failing on truncation only."""
    try:
        _decode(data, "warning")
    except pyvips.Error as exc:
        if not _harmless(exc):
            raise _corrupt(field, exc) from None
        try:
            _decode(data, "truncated")
        except pyvips.Error as again:
            raise _corrupt(field, again) from None


# libjpeg warnings that lose no pixel: phones and cameras write such files every day.
HARMLESS_JPEG_WARNINGS = (
    "extraneous bytes before marker",
    "invalid sos parameters for sequential jpeg",
    "bad icc marker",
    "unknown adobe color transform",
    "unknown jfif revision",
)


def _decode(data: bytes, fail_on: str) -> None:
    pyvips.Image.thumbnail_buffer(data, 64, option_string=f"fail_on={fail_on}").avg()


def _harmless(exc: pyvips.Error) -> bool:
    text = str(getattr(exc, "detail", "") or exc).lower()
    return "vipsjpeg" in text and any(quirk in text for quirk in HARMLESS_JPEG_WARNINGS)


def _corrupt(field: str, exc: pyvips.Error) -> RejectedImage:
    return RejectedImage(422, f"{field}: the image is truncated or corrupt ({_why(exc)})")


def _why(exc: pyvips.Error) -> str:
    """libvips' last detail line, which names the actual problem."""
    lines = [line.strip() for line in str(getattr(exc, "detail", "") or exc).splitlines()]
    detail = next((line for line in reversed(lines) if line), "unreadable")
    return detail[:200]
