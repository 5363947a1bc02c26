"""Variants with libvips: sizes, orientation, metadata stripping, formats, watermark."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import pyvips
from PIL import Image

from conveyor.workloads.images import engine, vips
from conveyor.workloads.images.presets import BUILTIN, VariantSpec, Watermark
from tests.integration import images_samples as samples

OPTIONS = engine.EncodeOptions(avif_effort=0)
FORMATS = ("jpeg", "webp", "avif")


@pytest.fixture(autouse=True, scope="module")
def _vips() -> None:
    vips.configure()


def _open(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def test_variants_are_upright_sized_and_stripped_in_every_format() -> None:
    source = samples.rotated_jpeg_with_gps(600, 450)
    made = engine.make_variant(source, VariantSpec(name="m", width=300), FORMATS, OPTIONS)
    assert [item.format for item in made] == list(FORMATS)
    for item in made:
        picture = _open(item.data)
        assert picture.format == {"jpeg": "JPEG", "webp": "WEBP", "avif": "AVIF"}[item.format]
        assert picture.size == (item.width, item.height) == (300, 225)
        assert samples.is_red(samples.colour_at(picture, 0.5, 0.1))
        assert samples.is_blue(samples.colour_at(picture, 0.5, 0.9))
        exif = picture.getexif()
        assert samples.GPS_IFD not in exif
        assert samples.ORIENTATION not in exif


def test_metadata_is_kept_when_the_preset_says_so() -> None:
    source = samples.rotated_jpeg_with_gps(600, 450)
    options = engine.EncodeOptions(strip_metadata=False)
    (item,) = engine.make_variant(source, VariantSpec(name="m", width=300), ("jpeg",), options)
    assert samples.GPS_IFD in _open(item.data).getexif()


def test_crop_fills_the_box_and_small_sources_are_not_enlarged() -> None:
    source = samples.jpeg(600, 450)
    (square,) = engine.make_variant(
        source, VariantSpec(name="t", width=200, height=200, crop=True), ("webp",), OPTIONS
    )
    assert (square.width, square.height) == (200, 200)
    (large,) = engine.make_variant(source, VariantSpec(name="l", width=1600), ("jpeg",), OPTIONS)
    assert (large.width, large.height) == (600, 450)


def test_png_with_alpha_is_flattened_for_jpeg_and_kept_for_webp() -> None:
    out = io.BytesIO()
    Image.new("RGBA", (80, 60), (10, 200, 10, 0)).save(out, "PNG")
    jpeg, webp = engine.make_variant(
        out.getvalue(), VariantSpec(name="m", width=40), ("jpeg", "webp"), OPTIONS
    )
    assert _open(jpeg.data).mode == "RGB"
    assert samples.colour_at(_open(jpeg.data), 0.5, 0.5) == (255, 255, 255)
    assert _open(webp.data).mode == "RGBA"


def test_text_watermark_marks_its_corner_only() -> None:
    source = samples.jpeg(400, 300)
    spec = VariantSpec(name="m", width=400)
    plain = _open(engine.make_variant(source, spec, ("jpeg",), OPTIONS)[0].data).convert("RGB")
    mark = Watermark(text="CONVEYOR", position="bottom-right", opacity=1.0, scale=0.1)
    marked = _open(engine.make_variant(source, spec, ("jpeg",), OPTIONS, mark)[0].data)
    marked = marked.convert("RGB")
    assert marked.size == plain.size

    def differs(box: tuple[int, int, int, int]) -> int:
        return sum(
            1
            for x in range(box[0], box[2], 2)
            for y in range(box[1], box[3], 2)
            if abs(sum(plain.getpixel((x, y))) - sum(marked.getpixel((x, y)))) > 120  # type: ignore[arg-type]
        )

    assert differs((250, 240, 400, 300)) > 20  # white text over blue
    assert differs((0, 0, 150, 60)) == 0


def test_image_watermark_with_opacity(tmp_path: Path) -> None:
    logo = tmp_path / "logo.png"
    Image.new("RGB", (50, 50), (255, 255, 255)).save(logo)
    mark = Watermark(image=logo, position="top-left", opacity=0.5, scale=0.25, margin=0)
    source = samples.jpeg(400, 300)
    (item,) = engine.make_variant(
        source, VariantSpec(name="m", width=400), ("jpeg",), OPTIONS, mark
    )
    r, g, b = samples.colour_at(_open(item.data), 0.02, 0.02)
    # Half-transparent white over red: pink, neither red nor white.
    assert r > 200
    assert 90 < g < 170
    assert 90 < b < 170


def test_a_missing_watermark_image_is_a_configuration_error(tmp_path: Path) -> None:
    mark = Watermark(image=tmp_path / "nope.png")
    with pytest.raises(engine.WatermarkError, match=r"nope\.png"):
        engine.make_variant(
            samples.jpeg(100, 80), VariantSpec(name="m", width=50), ("jpeg",), OPTIONS, mark
        )


def test_the_working_copy_is_upright_and_just_large_enough() -> None:
    specs = BUILTIN["default"].variants
    assert engine.needed_width(specs, 4000, 3000) == 1600
    # A tall image: the 200 px square crop needs 200 px of width, `large` 1600.
    assert engine.needed_width(specs, 900, 4000) == 900
    bounded = (VariantSpec(name="b", width=800, height=100),)
    assert engine.needed_width(bounded, 4000, 3000) == 134  # the height bound decides
    copy = engine.working_copy(samples.rotated_jpeg_with_gps(1200, 900), 600)
    assert (copy.width, copy.height, copy.bands) == (600, 450, 3)
    again = engine.WorkingCopy.from_name(copy.name, copy.data)
    for spec in specs:
        (item,) = engine.make_variant(again, spec, ("webp",), OPTIONS)
        picture = _open(item.data)
        assert (
            picture.size
            == {"thumbnail": (200, 200), "medium": (600, 450), "large": (600, 450)}[spec.name]
        )
        assert samples.is_red(samples.colour_at(picture, 0.5, 0.1))
        assert samples.is_blue(samples.colour_at(picture, 0.5, 0.9))


def test_the_working_copy_refuses_a_truncated_source() -> None:
    with pytest.raises(pyvips.Error, match="premature end"):
        engine.working_copy(samples.truncated_jpeg(), 400)
    with pytest.raises(ValueError, match="has 3 bytes"):
        engine.WorkingCopy.from_name("2x2x3.raw", b"abc")
