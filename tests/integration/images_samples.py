"""Images made in the tests: photos with EXIF orientation and GPS, and hostile files."""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image, ImageDraw

RED = (220, 30, 30)
BLUE = (30, 30, 220)
GPS_IFD = 0x8825
ORIENTATION = 0x0112


def upright(width: int = 1200, height: int = 900) -> Image.Image:
    """Top half red, bottom half blue, as a person should see it."""
    image = Image.new("RGB", (width, height), BLUE)
    ImageDraw.Draw(image).rectangle((0, 0, width, height // 2 - 1), fill=RED)
    return image


def rotated_jpeg_with_gps(width: int = 1200, height: int = 900) -> bytes:
    """The pixels stored turned 90 degrees anticlockwise, with EXIF orientation 6 ("rotate
    90 clockwise to display") and a GPS position, as a phone held upright writes them."""
    stored = upright(width, height).rotate(90, expand=True)
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    exif[0x010F] = "Conveyor Test Camera"
    gps = exif.get_ifd(GPS_IFD)
    gps.update({1: "N", 2: (48.0, 51.0, 24.0), 3: "E", 4: (2.0, 21.0, 3.0)})
    out = io.BytesIO()
    stored.save(out, "JPEG", quality=90, exif=exif.tobytes())
    return out.getvalue()


def jpeg(width: int = 1200, height: int = 900) -> bytes:
    out = io.BytesIO()
    upright(width, height).save(out, "JPEG", quality=85)
    return out.getvalue()


def png(width: int = 64, height: int = 48) -> bytes:
    out = io.BytesIO()
    upright(width, height).save(out, "PNG")
    return out.getvalue()


def truncated_jpeg() -> bytes:
    data = jpeg()
    return data[: len(data) // 2]


def jpeg_cut_with_end_marker() -> bytes:
    """Half a JPEG, closed with an end-of-image marker: libjpeg only warns about it."""
    data = jpeg()
    return data[: len(data) // 2] + b"\xff\xd9"


def jpeg_declaring(width: int, height: int) -> bytes:
    """A well-formed 16x16 JPEG whose frame header claims `width`x`height`: a few hundred
    bytes of scan data for millions of pixels, which a lenient decoder fills with grey."""
    out = io.BytesIO()
    upright(16, 16).save(out, "JPEG", quality=85)
    data = bytearray(out.getvalue())
    at = 2
    while data[at + 1] not in (0xC0, 0xC1, 0xC2):  # walk the markers to the frame header
        at += 2 + struct.unpack(">H", data[at + 2 : at + 4])[0]
    data[at + 5 : at + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def jpeg_with_extraneous_bytes() -> bytes:
    """A complete JPEG with stray bytes before its scan, as some phones and cameras write."""
    data = jpeg(320, 240)
    scan = data.index(b"\xff\xda")
    return data[:scan] + b"\x00\x00\x00" + data[scan:]


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A few hundred bytes declaring 10 gigapixels: rows of zeros compress to almost nothing."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = zlib.compress(b"\x00" * (1 + width * 3) * 4, 9)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", rows)
        + _chunk(b"IEND", b"")
    )


SVG = (
    b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10">'
    b'<script>alert(1)</script><rect width="10" height="10"/></svg>'
)
HTML = b"<!DOCTYPE html><html><body><script>alert(document.cookie)</script></body></html>"


def colour_at(image: Image.Image, x: float, y: float) -> tuple[int, int, int]:
    """The RGB colour at a relative position."""
    rgb = image.convert("RGB")
    pixel = rgb.getpixel((int(x * (rgb.width - 1)), int(y * (rgb.height - 1))))
    assert isinstance(pixel, tuple)
    return (int(pixel[0]), int(pixel[1]), int(pixel[2]))


def is_red(colour: tuple[int, int, int]) -> bool:
    return colour[0] > 150 and colour[2] < 100


def is_blue(colour: tuple[int, int, int]) -> bool:
    return colour[2] > 150 and colour[0] < 100
