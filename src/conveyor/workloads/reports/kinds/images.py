"""Images by preset: processed, bytes in, bytes out and bytes saved."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from sqlalchemy import Connection, select

from conveyor.workloads.images.models import Image, ImageVariant
from conveyor.workloads.reports.period import Period
from conveyor.workloads.reports.table import Chart, Column, Row, Type, stream

PROCESSED = ("processed", "partially_processed")


class _ImagesSummary:
    def __init__(self) -> None:
        self.presets: dict[str, list[int]] = {}

    def add(self, rows: Sequence[Row]) -> None:
        for row in rows:
            totals = self.presets.setdefault(row[2], [0, 0, 0, 0])
            totals[0] += 1
            totals[1] += row[3] in PROCESSED
            totals[2] += row[5]
            totals[3] += row[6]

    def finish(self, connection: Connection) -> list[Row]:
        out: list[Row] = []
        for preset in sorted(self.presets):
            images, processed, bytes_in, bytes_out = self.presets[preset]
            share = round(100 * (bytes_in - bytes_out) / bytes_in, 2) if bytes_in else None
            out.append(
                (preset, images, processed, bytes_in, bytes_out, bytes_in - bytes_out, share)
            )
        return out


class ImagesReport:
    kind = "images"
    title = "Images"
    workload = "images"
    columns = (
        Column("image_id"),
        Column("created_at", Type.DATETIME),
        Column("preset"),
        Column("status"),
        Column("source_format"),
        Column("bytes_in", Type.INT),
        Column("bytes_out", Type.INT),
        Column("bytes_saved", Type.INT),
    )
    summary_columns = (
        Column("preset"),
        Column("images", Type.INT),
        Column("processed", Type.INT),
        Column("bytes_in", Type.INT),
        Column("bytes_out", Type.INT),
        Column("bytes_saved", Type.INT),
        Column("saved_percent", Type.FLOAT),
    )
    chart = Chart("Bytes in and out by preset", "preset", ("bytes_in", "bytes_out"))

    def chunks(
        self, connection: Connection, period: Period, owner: str | None, size: int
    ) -> Iterator[list[Row]]:
        first, after = period.bounds()
        query = select(
            Image.id, Image.created_at, Image.preset, Image.status, Image.source_format,
            Image.source_bytes,
        ).where(Image.created_at >= first, Image.created_at < after)  # fmt: skip
        if owner is not None:
            query = query.where(Image.owner == owner)
        for chunk in stream(connection, query.order_by(Image.created_at, Image.id), size):
            out = self._bytes_out(connection, [row[0] for row in chunk])
            yield [
                (image_id, period.local(created), preset, status, fmt, source or 0,
                 out.get(image_id, 0), (source or 0) - out.get(image_id, 0))
                for image_id, created, preset, status, fmt, source in chunk
            ]  # fmt: skip

    def _bytes_out(self, connection: Connection, ids: list[str]) -> dict[str, int]:
        """Bytes of the finished variants of one chunk of images (one query a chunk)."""
        totals: dict[str, int] = {}
        if not ids:
            return totals
        query = select(ImageVariant.image_id, ImageVariant.outputs).where(
            ImageVariant.image_id.in_(ids), ImageVariant.status == "done"
        )
        for image_id, outputs in connection.execute(query):
            made = sum(int(item.get("bytes") or 0) for item in outputs or [])
            totals[image_id] = totals.get(image_id, 0) + made
        return totals

    def summary(self, period: Period, owner: str | None, size: int) -> _ImagesSummary:
        return _ImagesSummary()
