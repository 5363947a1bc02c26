"""Upload checks: type from content, names that lie, bombs, truncation, unsupported files."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from conveyor.workloads.images import vips
from conveyor.workloads.images.validation import (
    Limits,
    RejectedImage,
    declared_format,
    inspect_upload,
    sniff,
)
from tests.integration import images_samples as samples

LIMITS = Limits(max_bytes=5_000_000, max_width=5000, max_height=5000, max_pixels=20_000_000)


@pytest.fixture(autouse=True, scope="module")
def _vips() -> None:
    vips.configure()


def _encoded(fmt: str, size: tuple[int, int] = (40, 30)) -> bytes:
    out = io.BytesIO()
    samples.upright(*size).save(out, fmt)
    return out.getvalue()


@pytest.mark.parametrize(
    ("fmt", "expected"), [("JPEG", "jpeg"), ("PNG", "png"), ("WEBP", "webp"), ("AVIF", "avif")]
)
def test_supported_formats_are_recognised_by_content(fmt: str, expected: str) -> None:
    data = _encoded(fmt)
    assert sniff(data) == expected
    inspected = inspect_upload(
        data, LIMITS, filename="upload", content_type="application/octet-stream"
    )
    assert (inspected.format, inspected.width, inspected.height) == (expected, 40, 30)


def test_exif_orientation_gives_the_size_as_shown() -> None:
    inspected = inspect_upload(samples.rotated_jpeg_with_gps(120, 90), LIMITS, filename="a.jpg")
    assert (inspected.width, inspected.height) == (120, 90)


@pytest.mark.parametrize(
    ("data", "filename", "content_type", "status", "message"),
    [
        (samples.SVG, "a.png", "image/png", 415, "an SVG document"),
        (samples.HTML, "a.jpg", "image/jpeg", 415, "an HTML document"),
        (b"GIF89a" + b"\x00" * 20, "a.gif", None, 415, "a GIF image"),
        (b"%PDF-1.7\n", "a.pdf", None, 415, "a PDF document"),
        (b"", "a.jpg", None, 422, "empty"),
        (samples.png(), "photo.jpg", None, 422, "content is PNG but its name 'photo.jpg'"),
        (samples.png(), "photo", "image/jpeg", 422, "content type 'image/jpeg' says JPEG"),
        (samples.truncated_jpeg(), "cut.jpg", None, 422, "truncated or corrupt"),
        (samples.jpeg_cut_with_end_marker(), "cut.jpg", None, 422, "premature end of data"),
        (samples.jpeg_declaring(4000, 3000), "big.jpg", None, 422, "truncated or corrupt"),
        (samples.png_bomb(), "bomb.png", None, 422, "100000x100000 pixels"),
        (b"\xff\xd8\xff" + b"\x00" * 100, "x.jpg", None, 422, "not a readable JPEG"),
    ],
)
def test_bad_uploads_are_refused_with_the_field_and_the_reason(
    data: bytes, filename: str, content_type: str | None, status: int, message: str
) -> None:
    with pytest.raises(RejectedImage) as caught:
        inspect_upload(data, LIMITS, filename=filename, content_type=content_type)
    assert caught.value.status == status
    assert caught.value.message.startswith("file: ")
    assert message in caught.value.message


def test_the_pixel_count_is_checked_from_the_header_too() -> None:
    limits = Limits(max_bytes=5_000_000, max_width=5000, max_height=5000, max_pixels=1000)
    with pytest.raises(RejectedImage, match="has 1200 pixels; the limit is 1000"):
        inspect_upload(_encoded("PNG", (40, 30)), limits)


def test_a_bomb_is_refused_without_decoding_its_pixels() -> None:
    # 10 gigapixels would need 30 GB decoded; the check must finish at the header.
    bomb = samples.png_bomb()
    assert len(bomb) < 20_000
    with pytest.raises(RejectedImage, match="limit is 5000x5000"):
        inspect_upload(bomb, LIMITS)


def test_oversized_files_are_413() -> None:
    limits = Limits(max_bytes=100, max_width=10, max_height=10, max_pixels=100)
    with pytest.raises(RejectedImage) as caught:
        inspect_upload(samples.png(), limits)
    assert caught.value.status == 413


def test_declared_format_prefers_the_name_and_ignores_unknown_types() -> None:
    assert declared_format("a.JPEG", "image/png") == ("jpeg", "name 'a.JPEG'")
    assert declared_format(None, "image/webp; q=1") == ("webp", "content type 'image/webp'")
    assert declared_format("blob", "application/octet-stream") is None


def test_avif_needs_an_avif_brand() -> None:
    data = _encoded("AVIF")
    assert sniff(data) == "avif"
    mp4 = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2" + b"\x00" * 16
    assert sniff(mp4) is None
    with pytest.raises(RejectedImage, match="HEIF/MP4 file that is not AVIF"):
        inspect_upload(mp4, LIMITS)


def test_a_decoded_upload_is_a_real_image() -> None:
    # Belt and braces: Pillow agrees with what the checks let through.
    Image.open(io.BytesIO(samples.jpeg(64, 48))).load()


def test_a_tiny_jpeg_declaring_millions_of_pixels_is_not_filled_with_grey() -> None:
    # The probe's file: ~700 bytes claiming 12000x4000, within every size limit.
    limits = Limits(max_bytes=20_000_000, max_width=12_000, max_height=12_000, max_pixels=50 << 20)
    data = samples.jpeg_declaring(12_000, 4_000)
    assert len(data) < 1000
    with pytest.raises(RejectedImage) as caught:
        inspect_upload(data, limits, filename="probe.jpg")
    assert caught.value.status == 422
    assert "premature end of data segment" in caught.value.message


def test_harmless_jpeg_quirks_are_accepted() -> None:
    # Stray bytes before a marker lose no pixel; phones write them. Only data loss fails.
    inspected = inspect_upload(samples.jpeg_with_extraneous_bytes(), LIMITS, filename="a.jpg")
    assert (inspected.format, inspected.width, inspected.height) == ("jpeg", 320, 240)
