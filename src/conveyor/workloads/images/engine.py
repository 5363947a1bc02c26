"""Making one variant with libvips: decode once, shrunk on load, then encode each format.

`thumbnail_buffer` picks the loader's shrink-on-load factor (JPEG DCT scaling, WebP and
AVIF reduced decoding) so a 4000x3000 photo is never decoded at full size for a 200 px
thumbnail, and it turns the image upright from its EXIF orientation. Metadata goes at save
time: `keep="icc"` drops EXIF (with its GPS block), XMP and IPTC and keeps only the colour
profile.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from html import escape
from math import ceil
from pathlib import Path

import pyvips

from conveyor.workloads.images.presets import Format, VariantSpec, Watermark

# Large enough to mean "no limit" for the other side of a fit-to-width resize.
UNBOUNDED = 100_000


@dataclass(frozen=True)
class EncodeOptions:
    jpeg_quality: int = 82
    webp_quality: int = 80
    webp_effort: int = 2
    avif_quality: int = 50
    avif_effort: int = 0
    strip_metadata: bool = True


@dataclass(frozen=True)
class Encoded:
    format: Format
    data: bytes
    width: int
    height: int


class WatermarkError(ValueError):
    """The watermark image cannot be read: a configuration problem, not the upload's."""


def _srgb(image: pyvips.Image) -> pyvips.Image:
    if image.interpretation != "srgb" or image.format != "uchar":
        image = image.colourspace("srgb")
    return image


def resize(source: bytes | WorkingCopy, spec: VariantSpec) -> pyvips.Image:
    """The variant's pixels, upright, in 8-bit sRGB, held in memory for several encoders."""
    height = spec.box_height if spec.crop else spec.height or UNBOUNDED
    crop = "centre" if spec.crop else "none"
    if isinstance(source, WorkingCopy):
        image = source.image().thumbnail_image(spec.width, height=height, crop=crop, size="down")
    else:
        image = pyvips.Image.thumbnail_buffer(
            source, spec.width, height=height, crop=crop, size="down"
        )
    # The decode pipeline is sequential: materialise it once (a few MB at most), so each
    # encoder reads memory instead of decoding the source again.
    return _srgb(image).copy_memory()


@dataclass(frozen=True)
class WorkingCopy:
    """The upload decoded once, shrunk on load to the largest size any variant needs, as
    raw 8-bit sRGB pixels. Every variant starts from it: no loader parses it, and the
    original's entropy decoding is paid once per image instead of once per variant."""

    data: bytes
    width: int
    height: int
    bands: int

    def image(self) -> pyvips.Image:
        return pyvips.Image.new_from_memory(self.data, self.width, self.height, self.bands, "uchar")

    @property
    def name(self) -> str:
        return f"{self.width}x{self.height}x{self.bands}.raw"

    @classmethod
    def from_name(cls, name: str, data: bytes) -> WorkingCopy:
        width, height, bands = (int(part) for part in name.removesuffix(".raw").split("x"))
        if len(data) != width * height * bands:
            raise ValueError(f"working copy {name} has {len(data)} bytes")
        return cls(data, width, height, bands)


def needed_width(specs: Iterable[VariantSpec], width: int, height: int) -> int:
    """The width (of the upright image) from which every variant can be made without
    enlarging: a crop fills its box, a bounded fit stays inside it."""
    needed = 1
    for spec in specs:
        if spec.crop:
            need = max(spec.width, spec.box_height * width / height)
        elif spec.height:
            need = min(spec.width, spec.height * width / height)
        else:
            need = spec.width
        needed = max(needed, ceil(need))
    return min(width, needed)


def working_copy(data: bytes, width: int) -> WorkingCopy:
    """Decode to the last byte (failing on truncation), upright, at `width`."""
    image = pyvips.Image.thumbnail_buffer(
        data, width, height=UNBOUNDED, size="down", option_string="fail_on=truncated"
    )
    if image.get_typeof("icc-profile-data"):
        # Raw pixels carry no profile: bring a wide-gamut photo into sRGB first. Only
        # then, since a colour transform costs as much as the decode itself.
        image = image.icc_transform("srgb", embedded=True)
    image = _srgb(image)
    return WorkingCopy(bytes(image.write_to_memory()), image.width, image.height, image.bands)


def apply_watermark(image: pyvips.Image, mark: Watermark) -> pyvips.Image:
    overlay = _watermark_overlay(image.width, mark)
    margin = round(image.width * mark.margin)
    x, y = _place(image, overlay, mark.position, margin)
    composed = image.composite2(overlay, "over", x=x, y=y)
    # composite2 always adds alpha; give it back only if the variant had it.
    return composed if image.hasalpha() else composed.extract_band(0, n=image.bands)


def _watermark_overlay(width: int, mark: Watermark) -> pyvips.Image:
    size = max(8, round(width * mark.scale))
    if mark.text is not None:
        mask = pyvips.Image.text(escape(mark.text), font=f"sans bold {size}", dpi=72)
        white = mask.new_from_image([255, 255, 255])
        return white.bandjoin((mask * mark.opacity).cast("uchar")).copy(interpretation="srgb")
    assert mark.image is not None
    try:
        source = Path(mark.image).read_bytes()
        overlay = pyvips.Image.thumbnail_buffer(source, size * 4)
    except (OSError, pyvips.Error) as exc:
        raise WatermarkError(f"cannot read watermark image {mark.image}: {exc}") from exc
    if overlay.interpretation != "srgb" or overlay.format != "uchar":
        overlay = overlay.colourspace("srgb")
    if not overlay.hasalpha():
        overlay = overlay.bandjoin(255)
    alpha = (overlay[overlay.bands - 1] * mark.opacity).cast("uchar")
    return overlay.extract_band(0, n=overlay.bands - 1).bandjoin(alpha)


def _place(
    image: pyvips.Image, overlay: pyvips.Image, position: str, margin: int
) -> tuple[int, int]:
    right = max(0, image.width - overlay.width - margin)
    bottom = max(0, image.height - overlay.height - margin)
    positions = {
        "top-left": (margin, margin),
        "top-right": (right, margin),
        "bottom-left": (margin, bottom),
        "bottom-right": (right, bottom),
        "center": (
            max(0, (image.width - overlay.width) // 2),
            max(0, (image.height - overlay.height) // 2),
        ),
    }
    return positions[position]


def encode(image: pyvips.Image, fmt: Format, options: EncodeOptions) -> bytes:
    keep = "icc" if options.strip_metadata else "all"
    if fmt == "jpeg":
        flat = image.flatten(background=[255, 255, 255]) if image.hasalpha() else image
        return bytes(flat.jpegsave_buffer(Q=options.jpeg_quality, keep=keep, interlace=True))
    if fmt == "webp":
        return bytes(
            image.webpsave_buffer(Q=options.webp_quality, effort=options.webp_effort, keep=keep)
        )
    return bytes(
        image.heifsave_buffer(
            Q=options.avif_quality, effort=options.avif_effort, compression="av1", keep=keep
        )
    )


def make_variant(
    data: bytes | WorkingCopy,
    spec: VariantSpec,
    formats: tuple[Format, ...],
    options: EncodeOptions,
    watermark: Watermark | None = None,
) -> list[Encoded]:
    image = resize(data, spec)
    if watermark is not None:
        image = apply_watermark(image, watermark).copy_memory()
    width, height = image.width, image.height
    return [
        Encoded(format=fmt, data=encode(image, fmt, options), width=width, height=height)
        for fmt in formats
    ]
