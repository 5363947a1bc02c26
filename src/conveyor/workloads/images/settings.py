"""The images workload's settings: upload limits, presets, encoder quality and libvips."""

from __future__ import annotations

from pydantic import Field, field_validator

from conveyor.core.settings import SettingsSection
from conveyor.workloads.images.presets import parse_presets


class ImagesSettings(SettingsSection):
    image_max_upload_bytes: int = Field(
        default=20 * 1_048_576,
        ge=1024,
        description="Largest image upload (the multipart body may exceed it by a few headers).",
    )
    # Checked from the header, before any pixel is decoded (decompression bombs).
    image_max_width: int = Field(
        default=12_000, ge=16, description="Widest image accepted (pixels)."
    )
    image_max_height: int = Field(
        default=12_000, ge=16, description="Tallest image accepted (pixels)."
    )
    image_max_pixels: int = Field(
        default=50_000_000,
        ge=256,
        description="Most pixels (width times height) of an image accepted.",
    )
    image_presets: str = Field(
        default="",
        description='Presets as JSON {"name": {"variants": [...], ...}}; unset: the built-in ones.',
    )
    image_jpeg_quality: int = Field(default=82, ge=1, le=100, description="JPEG quality, 1 to 100.")
    image_webp_quality: int = Field(default=80, ge=1, le=100, description="WebP quality, 1 to 100.")
    image_webp_effort: int = Field(
        default=2,
        ge=0,
        le=6,
        description="WebP encoding effort, 0 to 6: higher is slower and smaller.",
    )
    image_avif_quality: int = Field(default=50, ge=1, le=100, description="AVIF quality, 1 to 100.")
    # AV1 encoding is the slowest step by far: effort 0 encodes a 1600 px image about 6x
    # faster than 2 for files about 7% larger (docs/images.md has the figures).
    image_avif_effort: int = Field(
        default=0,
        ge=0,
        le=9,
        description="AVIF encoding effort, 0 to 9: higher is slower and smaller.",
    )
    # One deadline for the whole fetch, not per read: a server trickling bytes is cut off too.
    image_fetch_timeout_seconds: float = Field(
        default=20.0,
        gt=0,
        le=300,
        description="Seconds a worker may spend fetching an image given by URL, all in all.",
    )
    image_vips_concurrency: int = Field(
        default=1,
        ge=1,
        le=64,
        description="libvips threads per process; 1 lets processes, not threads, share the cores.",
    )
    image_tune_malloc: bool = Field(
        default=True,
        description="Fewer malloc arenas, mmap for large blocks, where images are made (glibc).",
    )

    @field_validator("image_presets")
    @classmethod
    def _presets_parse(cls, value: str) -> str:
        parse_presets(value)
        return value
