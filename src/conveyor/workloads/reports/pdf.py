"""The PDF format: the summary and its chart, from a Jinja2 HTML template, through fpdf2."""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from conveyor.workloads.reports.chart import column_chart
from conveyor.workloads.reports.formats import Content, cell_text
from conveyor.workloads.reports.table import Type

TEMPLATES = Path(__file__).parent / "templates"


def _latin1(text: str) -> str:
    # The PDF's built-in fonts cover Latin-1; anything else is shown as '?'.
    return text.encode("latin-1", "replace").decode("latin-1")


class PdfFormat:
    name = "pdf"
    extension = "pdf"
    content_type = "application/pdf"

    def __init__(self, max_rows: int = 500) -> None:
        self.max_rows = max_rows

    def write(self, target: Path, content: Content) -> None:
        import jinja2
        from fpdf import FPDF

        # The PDF shows the summary; the detail rows only pass through it.
        count = sum(len(chunk) for chunk in content.detail)
        summary = content.summary()
        definition = content.definition
        shown = summary[: self.max_rows]
        environment = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True)
        with tempfile.TemporaryDirectory(prefix="conveyor-report-") as scratch:
            chart = None
            if shown:
                chart = str(Path(scratch) / "chart.svg")
                Path(chart).write_text(_svg(content, shown), encoding="utf-8")
            html = environment.get_template("report.html.j2").render(
                title=definition.title + " report",
                period=content.period,
                owner=content.owner,
                rows=f"{count:,}",
                generated=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
                chart=chart,
                columns=definition.summary_columns,
                summary=[[_cell(value) for value in row] for row in shown],
                hidden=len(summary) - len(shown),
            )
            wide = len(definition.summary_columns) > 6
            pdf = FPDF(orientation="landscape" if wide else "portrait")
            pdf.set_title(f"{definition.title} report {content.period.start}..{content.period.end}")
            pdf.add_page()
            pdf.set_font("helvetica", size=9)
            pdf.write_html(_latin1(html))
            pdf.output(str(target))


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}"
    if isinstance(value, int):
        return f"{value:,}"
    return cell_text(value)


def _svg(content: Content, rows: list[tuple[Any, ...]]) -> str:
    definition = content.definition
    names = [column.name for column in definition.summary_columns]
    label = names.index(definition.chart.label)
    labels = [cell_text(row[label]) for row in rows]
    series = []
    for name in definition.chart.series:
        index = names.index(name)
        assert definition.summary_columns[index].type in (Type.INT, Type.FLOAT)
        series.append((name, [float(row[index] or 0) for row in rows]))
    return column_chart(definition.chart.title, labels, series)
