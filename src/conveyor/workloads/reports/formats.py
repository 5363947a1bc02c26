"""The file formats: each writes detail rows as they come and the summary at the end."""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any, Protocol

from conveyor.workloads.reports.period import Period
from conveyor.workloads.reports.table import Column, Definition, Row, Type

# An XLSX sheet holds 1,048,576 rows; the detail goes on to another sheet past this.
XLSX_SHEET_ROWS = 1_048_575
# Day 0 of Excel's 1900 date system, as counted after its 1900-02-29 (real dates only).
EXCEL_EPOCH = datetime(1899, 12, 30)


@dataclass(frozen=True)
class Content:
    definition: Definition
    period: Period
    owner: str | None
    detail: Iterator[list[Row]]
    summary: Callable[[], list[Row]]


class Format(Protocol):
    name: str
    extension: str
    content_type: str

    def write(self, target: Path, content: Content) -> None: ...


def cell_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, float):
        return f"{value:.6g}" if abs(value) < 1e15 else repr(value)
    return str(value)


class CsvFormat:
    """The detail rows, one line each: the export a spreadsheet or a script reads."""

    name = "csv"
    extension = "csv"
    content_type = "text/csv; charset=utf-8"

    def write(self, target: Path, content: Content) -> None:
        with target.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow([column.name for column in content.definition.columns])
            for chunk in content.detail:
                # str() of each value: ISO dates and times, None as an empty field.
                writer.writerows(chunk)
        content.summary()


class XlsxFormat:
    """A Summary sheet with a chart, then the detail rows; constant memory: rows go to disk
    as they are written, so a million rows cost no more memory than a hundred."""

    name = "xlsx"
    extension = "xlsx"
    content_type = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"

    def __init__(self, constant_memory: bool = True) -> None:
        # Off only for the benchmark's baseline: every cell kept in memory until the end.
        self.constant_memory = constant_memory

    def write(self, target: Path, content: Content) -> None:
        import xlsxwriter

        definition = content.definition
        book = xlsxwriter.Workbook(str(target), {"constant_memory": self.constant_memory})
        try:
            styles = {
                Type.INT: book.add_format({"num_format": "#,##0"}),
                Type.FLOAT: book.add_format({"num_format": "#,##0.000"}),
                Type.DATE: book.add_format({"num_format": "yyyy-mm-dd"}),
                Type.DATETIME: book.add_format({"num_format": "yyyy-mm-dd hh:mm:ss"}),
            }
            header = book.add_format({"bold": True, "bottom": 1})
            summary_sheet = book.add_worksheet("Summary")
            sheet, written, sheets = None, XLSX_SHEET_ROWS, 0
            for chunk in content.detail:
                for row in chunk:
                    if written == XLSX_SHEET_ROWS:
                        sheets += 1
                        sheet = book.add_worksheet("Rows" if sheets == 1 else f"Rows {sheets}")
                        _header(sheet, definition.columns, header)
                        written = 0
                    written += 1
                    assert sheet is not None
                    _cells(sheet, written, row, definition.columns, styles)
            if sheet is None:
                _header(book.add_worksheet("Rows"), definition.columns, header)
            rows = content.summary()
            columns = definition.summary_columns
            summary_sheet.write_string(0, 0, _title(content), book.add_format({"bold": True}))
            _header(summary_sheet, columns, header, at=2)
            for index, row in enumerate(rows):
                _cells(summary_sheet, 3 + index, row, columns, styles)
            for index, column in enumerate(columns):
                summary_sheet.set_column(index, index, max(12, len(column.name) + 2))
            if rows:
                summary_sheet.insert_chart(
                    3 + len(rows) + 2, 0, _chart(book, definition, len(rows))
                )
        finally:
            book.close()


def _title(content: Content) -> str:
    period = content.period
    return f"{content.definition.title}, {period.start} to {period.end} ({period.timezone})"


def _header(sheet: Any, columns: tuple[Column, ...], style: Any, at: int = 0) -> None:
    for index, column in enumerate(columns):
        sheet.write_string(at, index, column.name, style)


def _cells(
    sheet: Any, at: int, row: Row, columns: tuple[Column, ...], styles: dict[Type, Any]
) -> None:
    for index, (value, column) in enumerate(zip(row, columns, strict=True)):
        if value is None:
            continue
        if column.type in (Type.INT, Type.FLOAT):
            sheet.write_number(at, index, value, styles[column.type])
        elif column.type is Type.DATETIME:
            # The Excel serial number directly: much cheaper than write_datetime per cell.
            serial = (value - EXCEL_EPOCH).total_seconds() / 86400
            sheet.write_number(at, index, serial, styles[column.type])
        elif column.type is Type.DATE:
            sheet.write_datetime(at, index, value, styles[column.type])
        else:
            sheet.write_string(at, index, str(value))


def _chart(book: Any, definition: Definition, count: int) -> Any:
    names = [column.name for column in definition.summary_columns]
    label = names.index(definition.chart.label)
    chart = book.add_chart({"type": "column"})
    first, last = 3, 3 + count - 1
    for name in definition.chart.series:
        index = names.index(name)
        chart.add_series(
            {
                "name": name,
                "categories": ["Summary", first, label, last, label],
                "values": ["Summary", first, index, last, index],
            }
        )
    chart.set_title({"name": definition.chart.title})
    chart.set_size({"width": 720, "height": 360})
    return chart
