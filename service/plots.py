"""Inline SVG plots for the dashboard: no script, no external file, readable without CSS."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

_W, _H, _PAD_L, _PAD_B, _PAD_T = 560, 200, 40, 28, 12


@dataclass(frozen=True)
class Marker:
    """A vertical line at the bucket ``index`` (a model-version change)."""

    index: int
    label: str


def line_chart(
    labels: Sequence[str],
    values: Sequence[float | None],
    markers: Sequence[Marker] = (),
    *,
    title: str,
    y_max: float = 1.0,
) -> Markup:
    """A line over buckets with values in ``[0, y_max]``; gaps where a value is None.

    Each point carries ``data-value`` (rounded to 4 digits) and a ``<title>`` tooltip.
    """
    n = max(len(values), 1)
    plot_w, plot_h = _W - _PAD_L - 8, _H - _PAD_B - _PAD_T

    def x(i: int) -> float:
        return _PAD_L + (plot_w * (i + 0.5) / n)

    def y(v: float) -> float:
        return _PAD_T + plot_h * (1 - min(max(v / y_max, 0.0), 1.0))

    parts = [_frame(title, plot_w, plot_h, y_max)]
    segment: list[str] = []
    for i, value in enumerate([*values, None]):
        if value is None:
            if len(segment) > 1:
                parts.append(
                    f'<polyline fill="none" stroke="#1f6feb" points="{" ".join(segment)}"/>'
                )
            segment = []
            continue
        segment.append(f"{x(i):.1f},{y(value):.1f}")
        parts.append(
            f'<circle class="point" cx="{x(i):.1f}" cy="{y(value):.1f}" r="3" fill="#1f6feb" '
            f'data-label="{escape(labels[i])}" data-value="{value:.4f}">'
            f"<title>{escape(labels[i])}: {value:.3f}</title></circle>"
        )
    for marker in markers:
        parts.append(
            f'<line class="marker" x1="{x(marker.index):.1f}" x2="{x(marker.index):.1f}" '
            f'y1="{_PAD_T}" y2="{_PAD_T + plot_h}" stroke="#d1242f" stroke-dasharray="4 3"/>'
            f'<text x="{x(marker.index) + 3:.1f}" y="{_PAD_T + 10}" font-size="10" '
            f'fill="#d1242f">{escape(marker.label)}</text>'
        )
    parts.extend(_x_labels(labels, x))
    return Markup(_svg(title, "".join(parts)))


def bar_chart(labels: Sequence[str], counts: Sequence[int], *, title: str) -> Markup:
    """Bars of ``counts`` (a histogram); each bar carries ``data-count``."""
    n = max(len(counts), 1)
    top = max([*counts, 1])
    plot_w, plot_h = _W - _PAD_L - 8, _H - _PAD_B - _PAD_T
    width = plot_w / n
    parts = [_frame(title, plot_w, plot_h, float(top), integer=True)]
    for i, count in enumerate(counts):
        height = plot_h * count / top
        parts.append(
            f'<rect class="bar" x="{_PAD_L + i * width + 1:.1f}" '
            f'y="{_PAD_T + plot_h - height:.1f}" '
            f'width="{width - 2:.1f}" height="{height:.1f}" fill="#8250df" '
            f'data-label="{escape(labels[i])}" data-count="{count}">'
            f"<title>{escape(labels[i])}: {count}</title></rect>"
        )
    parts.extend(_x_labels(labels, lambda i: _PAD_L + width * (i + 0.5)))
    return Markup(_svg(title, "".join(parts)))


def _svg(title: str, body: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_W} {_H}" role="img" '
        f'aria-label="{escape(title)}" class="plot">{body}</svg>'
    )


def _frame(title: str, plot_w: float, plot_h: float, y_max: float, integer: bool = False) -> str:
    ticks = []
    for fraction in (0.0, 0.5, 1.0):
        ty = _PAD_T + plot_h * (1 - fraction)
        value = y_max * fraction
        text = f"{value:.0f}" if integer else f"{value:.1f}"
        ticks.append(
            f'<line x1="{_PAD_L}" x2="{_PAD_L + plot_w}" y1="{ty:.1f}" y2="{ty:.1f}" '
            f'stroke="#ddd"/><text x="{_PAD_L - 4}" y="{ty + 3:.1f}" font-size="10" '
            f'text-anchor="end">{text}</text>'
        )
    return f"<title>{escape(title)}</title>" + "".join(ticks)


def _x_labels(labels: Sequence[str], x: Callable[[int], float]) -> list[str]:
    step = max(1, len(labels) // 8)
    return [
        f'<text x="{x(i):.1f}" y="{_H - 8}" font-size="10" text-anchor="middle">'
        f"{escape(label)}</text>"
        for i, label in enumerate(labels)
        if i % step == 0
    ]
