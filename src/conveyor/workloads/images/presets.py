"""Named presets: which variants an upload gets, in which formats, with which watermark."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

Format = Literal["jpeg", "webp", "avif"]
Position = Literal["top-left", "top-right", "bottom-left", "bottom-right", "center"]

EXTENSIONS: dict[str, str] = {"jpeg": "jpg", "webp": "webp", "avif": "avif"}
MEDIA_TYPES: dict[str, str] = {"jpeg": "image/jpeg", "webp": "image/webp", "avif": "image/avif"}
DEFAULT_PRESET = "default"
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,39}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Watermark(_Strict):
    """Text, or an image file, laid over every variant."""

    text: str | None = Field(default=None, min_length=1, max_length=200)
    image: Path | None = None
    position: Position = "bottom-right"
    opacity: float = Field(default=0.5, gt=0, le=1)
    # Size relative to the variant's width: text height, or the image's width.
    scale: float = Field(default=0.04, gt=0, le=1)
    margin: float = Field(default=0.02, ge=0, le=0.5)

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        if (self.text is None) == (self.image is None):
            raise ValueError("a watermark needs exactly one of text or image")
        return self


class VariantSpec(_Strict):
    name: str = Field(pattern=_NAME.pattern)
    width: int = Field(ge=1, le=10_000)
    # None keeps the aspect ratio; with crop, the box is width x height (square by default).
    height: int | None = Field(default=None, ge=1, le=10_000)
    crop: bool = False
    formats: tuple[Format, ...] | None = None

    @property
    def box_height(self) -> int:
        return self.height or self.width


class Preset(_Strict):
    variants: tuple[VariantSpec, ...] = Field(min_length=1, max_length=20)
    formats: tuple[Format, ...] = Field(default=("jpeg", "webp", "avif"), min_length=1)
    watermark: Watermark | None = None
    # EXIF (with GPS), XMP and IPTC are dropped; the ICC profile is kept for colour.
    strip_metadata: bool = True

    @model_validator(mode="after")
    def _unique_names(self) -> Self:
        names = [variant.name for variant in self.variants]
        if len(set(names)) != len(names):
            raise ValueError("variant names must be unique within a preset")
        return self

    def formats_of(self, variant: VariantSpec) -> tuple[Format, ...]:
        return variant.formats or self.formats

    def variant(self, name: str) -> VariantSpec | None:
        return next((v for v in self.variants if v.name == name), None)


BUILTIN: dict[str, Preset] = {
    DEFAULT_PRESET: Preset(
        variants=(
            VariantSpec(name="thumbnail", width=200, height=200, crop=True),
            VariantSpec(name="medium", width=800),
            VariantSpec(name="large", width=1600),
        ),
    ),
}


def parse_presets(text: str) -> dict[str, Preset]:
    """Presets from CONVEYOR_IMAGE_PRESETS (JSON); empty means the built-in ones."""
    if not text.strip():
        return dict(BUILTIN)
    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"must be JSON: {exc}") from None
    if not isinstance(raw, dict) or not raw:
        raise ValueError('must be a JSON object of presets, e.g. {"default": {"variants": [...]}}')
    presets: dict[str, Preset] = {}
    for name, body in raw.items():
        if not _NAME.fullmatch(name):
            raise ValueError(f"preset name {name!r} must be lower-case letters, digits, - or _")
        try:
            presets[name] = Preset.model_validate(body)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in item['loc']) or name}: {item['msg']}"
                for item in exc.errors()
            )
            raise ValueError(f"preset {name!r}: {problems}") from None
    return presets
