"""A column chart as SVG, drawn from the summary rows, for the PDF."""

from __future__ import annotations

from collections.abc import Sequence
from xml.sax.saxutils import escape

WIDTH, HEIGHT = 720, 300
LEFT, BOTTOM, TOP = 70, 60, 30
COLOURS = ("#3b6ea8", "#d9822b", "#4f9a58", "#a33b3b")


def column_chart(
    title: str, labels: Sequence[str], series: Sequence[tuple[str, Sequence[float]]]
) -> str:
    """Grouped columns, one group per label; negative values are drawn as zero-height."""
    peak = max((max(values, default=0) for _, values in series), default=0) or 1
    plot_w, plot_h = WIDTH - LEFT - 20, HEIGHT - TOP - BOTTOM
    group_w = plot_w / max(len(labels), 1)
    bar_w = max(group_w * 0.8 / max(len(series), 1), 0.5)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}">',
        f'<text x="{WIDTH / 2}" y="18" font-size="14" text-anchor="middle">{escape(title)}</text>',
        f'<line x1="{LEFT}" y1="{TOP + plot_h}" x2="{LEFT + plot_w}" y2="{TOP + plot_h}" '
        'stroke="#333" stroke-width="1"/>',
        f'<text x="{LEFT - 6}" y="{TOP + 4}" font-size="10" text-anchor="end">{peak:,.0f}</text>',
        f'<text x="{LEFT - 6}" y="{TOP + plot_h}" font-size="10" text-anchor="end">0</text>',
    ]
    for group, label in enumerate(labels):
        x0 = LEFT + group * group_w + group_w * 0.1
        for index, (_, values) in enumerate(series):
            value = max(float(values[group]), 0.0)
            height = plot_h * value / peak
            parts.append(
                f'<rect x="{x0 + index * bar_w:.2f}" y="{TOP + plot_h - height:.2f}" '
                f'width="{bar_w:.2f}" height="{height:.2f}" '
                f'fill="{COLOURS[index % len(COLOURS)]}"/>'
            )
        if len(labels) <= 31:
            parts.append(
                f'<text x="{x0 + group_w * 0.4:.2f}" y="{TOP + plot_h + 14}" font-size="9" '
                f'text-anchor="middle">{escape(label[-12:])}</text>'
            )
    for index, (name, _) in enumerate(series):
        x = LEFT + index * 150
        parts.append(
            f'<rect x="{x}" y="{HEIGHT - 22}" width="10" height="10" '
            f'fill="{COLOURS[index % len(COLOURS)]}"/>'
            f'<text x="{x + 14}" y="{HEIGHT - 13}" font-size="11">{escape(name)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)
