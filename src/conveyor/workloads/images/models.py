"""Tables of the images workload: an uploaded image and the state of each of its variants."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from conveyor.core.models import Base, utcnow


class ImageStatus(StrEnum):
    # Given by URL: a worker is fetching it (the source fields are empty until then).
    FETCHING = "fetching"
    QUEUED = "queued"
    PROCESSING = "processing"
    PROCESSED = "processed"
    # Some variants failed for good; the others are kept and the failed ones can be retried.
    PARTIALLY_PROCESSED = "partially_processed"
    FAILED = "failed"


class VariantStatus(StrEnum):
    PENDING = "pending"
    PROCESSING = "processing"
    DONE = "done"
    FAILED = "failed"


FINISHED_VARIANT = frozenset({VariantStatus.DONE, VariantStatus.FAILED})


class Image(Base):
    __tablename__ = "conveyor_images"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner: Mapped[str] = mapped_column(String(120))
    # The pipeline's job; a retry starts a new one and this follows it.
    job_id: Mapped[str | None] = mapped_column(String(64))
    preset: Mapped[str] = mapped_column(String(40))
    status: Mapped[str] = mapped_column(String(24), default=ImageStatus.QUEUED)
    # A display name (core.filenames), never the client's raw name.
    filename: Mapped[str | None] = mapped_column(String(255))
    source_url: Mapped[str | None] = mapped_column(String(2048))
    # Empty while a URL is being fetched.
    source_key: Mapped[str | None] = mapped_column(String(512))
    source_format: Mapped[str | None] = mapped_column(String(16))
    source_bytes: Mapped[int | None] = mapped_column(Integer)
    # The source decoded once by `validate`, which every variant starts from.
    work_key: Mapped[str | None] = mapped_column(String(512))
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    manifest: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    variants: Mapped[list[ImageVariant]] = relationship(
        back_populates="image", order_by="ImageVariant.position", cascade="all, delete-orphan"
    )

    __table_args__ = (Index("ix_conveyor_images_owner_created", "owner", "created_at"),)


class ImageVariant(Base):
    __tablename__ = "conveyor_image_variants"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    image_id: Mapped[str] = mapped_column(ForeignKey("conveyor_images.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(40))
    position: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default=VariantStatus.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    # One entry per format: {"format", "width", "height", "bytes", "key"}.
    outputs: Mapped[list[Any]] = mapped_column(JSON, default=list)
    job_id: Mapped[str | None] = mapped_column(String(64))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    image: Mapped[Image] = relationship(back_populates="variants")

    __table_args__ = (UniqueConstraint("image_id", "name", name="uq_conveyor_image_variants_name"),)
