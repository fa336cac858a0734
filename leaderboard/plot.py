"""The speedup-quality Pareto plot and the realization chart as inline SVG, drawn by our own code.

No plotting library and no script: the site must work offline and from any static host, and a
few dozen circles, a step line and two axes are easy to write by hand. Every piece of text is
escaped here, since the result is inserted into the page as markup.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

from prunereg.registry.pareto import frontier

from .display import NOISY_SPREAD, family_label

FAMILY_COLOURS = {
    "dense": "#000000",
    "static_depth": "#0072B2",
    "dynamic_depth": "#56B4E9",
    "static_width": "#009E73",
    "static_cross_layer": "#9A8A00",
    "static_k_2_4": "#E69F00",
    "static_k_low_rank": "#D55E00",
    "dynamic_attention": "#CC79A7",
    "unstructured": "#7F7F7F",
}
"""Okabe-Ito colours, readable with the common colour-vision deficiencies."""

GRID = 'stroke="#e3e3e3"'
DENSE = 'stroke="#666" stroke-dasharray="4 3"'
FRONT = 'fill="none" stroke="#222" stroke-width="1.5"'
TICK = 'font-size="11" fill="#333"'
LABEL = 'font-size="12" fill="#111"'
POINT = 'fill-opacity="0.85" stroke="#fff" stroke-width="1"'
NOISY = 'fill="#fff" stroke-width="2" stroke-dasharray="2 2"'
FRONT_LABEL = 'font-size="10" fill="#222"'

WIDTH, HEIGHT = 760, 360
LEFT, RIGHT, TOP, BOTTOM = 58, 200, 16, 46


@dataclass(frozen=True)
class PlotPoint:
    quality_loss: float  # relative, 0.05 = 5 %
    speedup: float
    family: str
    label: str
    noisy: bool = False
    """Its median's p80/p20 spread is over display.NOISY_SPREAD: drawn hollow, so it reads as uncertain."""


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values (1, 2, 2.5 or 5 times a power of ten) that cover [lo, hi]."""
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    first, last = math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9)
    return [round(i * step, 10) for i in range(first, last + 1)]


def _fmt(value: float) -> str:
    return f"{value:.10g}"


class _Scale:
    """Maps the tick range onto pixels, inset so that points on the outer ticks stay inside the frame."""

    def __init__(self, ticks: list[float], start: float, end: float, inset: float = 10.0):
        direction = 1 if end > start else -1
        self.lo, self.hi = ticks[0], ticks[-1]
        self.start, self.end = start + direction * inset, end - direction * inset

    def __call__(self, value: float) -> float:
        return round(self.start + (value - self.lo) / (self.hi - self.lo) * (self.end - self.start), 2)


def _span(values: list[float], floor: float, ceiling: float) -> tuple[float, float]:
    """The data range, always showing `floor` (no loss) and `ceiling` (dense speed)."""
    return min(values + [floor]), max(values + [ceiling])


QUALITY_AXIS = {
    "measured": "measured quality loss relative to dense (%), lower is better",
    "reported": "reported quality loss (papers' tables, %), lower is better",
}
"""The x axis names its kind of quality: a reported and a measured plot must not read alike."""


def pareto_svg(points: Sequence[PlotPoint], title: str, quality: str = "measured") -> Markup:
    """x: relative quality loss in %, y: speedup over dense; the front as a step line.

    `quality` ("measured" or "reported") becomes the svg's data-quality and names the x axis.
    """
    xs = [100 * p.quality_loss for p in points]
    ys = [p.speedup for p in points]
    x_ticks = nice_ticks(*_span(xs, 0.0, 1.0))
    y_ticks = nice_ticks(*_span(ys, 1.0, 1.0))
    x = _Scale(x_ticks, LEFT, WIDTH - RIGHT)
    y = _Scale(y_ticks, HEIGHT - BOTTOM, TOP)
    out = _frame("pareto", title, quality)
    out += _axes(x, y, x_ticks, y_ticks, "", QUALITY_AXIS[quality], "measured speedup over dense, higher is better")
    out.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(1.0)}" y2="{y(1.0)}" {DENSE}/>')
    front = frontier(points)
    if front:
        steps = [f"M{x(100 * front[0].quality_loss)} {y(front[0].speedup)}"]
        steps += [f"H{x(100 * p.quality_loss)} V{y(p.speedup)}" for p in front[1:]]
        out.append(f'<path class="frontier" d="{" ".join(steps)}" {FRONT}/>')
    for p in sorted(points, key=lambda p: (p.family, p.label)):
        colour = FAMILY_COLOURS.get(p.family, "#444444")
        tip = f"{p.label}: {100 * p.quality_loss:.2f} % loss, {p.speedup:.2f}× speedup" + (
            " (noisy)" if p.noisy else ""
        )
        style = f'stroke="{colour}" {NOISY}' if p.noisy else f'fill="{colour}" {POINT}'
        out.append(
            f'<circle cx="{x(100 * p.quality_loss)}" cy="{y(p.speedup)}" r="5" {style}>'
            f"<title>{escape(tip)}</title></circle>"
        )
    for p in front:  # the points a reader looks for are named on the plot, not only on hover
        out.append(
            f'<text class="front-label" {FRONT_LABEL} x="{x(100 * p.quality_loss) + 7}" y="{y(p.speedup) - 7}">'
            f"{escape(p.label)}</text>"
        )
    lines = [(FRONT, "Pareto front"), (DENSE, "dense speed (1×)")]
    out.extend(_legend({p.family for p in points}, lines, noisy=any(p.noisy for p in points)))
    out.append("</svg>")
    return Markup("\n".join(out))


def _frame(kind: str, title: str, quality: str | None = None) -> list[str]:
    tag = "" if quality is None else f' data-quality="{escape(quality)}"'
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="{kind}"{tag} viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'role="img" aria-label="{escape(title)}" font-family="system-ui, sans-serif">',
        f"<title>{escape(title)}</title>",
        f'<rect x="{LEFT}" y="{TOP}" width="{WIDTH - LEFT - RIGHT}" height="{HEIGHT - TOP - BOTTOM}" '
        'fill="#fafafa" stroke="#999"/>',
    ]


def _axes(
    x: _Scale, y: _Scale, x_ticks: list[float], y_ticks: list[float], x_unit: str, x_label: str, y_label: str
) -> list[str]:
    """Grid lines, tick labels (y in ×, x in `x_unit`) and the two axis titles."""
    out = []
    for t in x_ticks:
        out.append(f'<line x1="{x(t)}" x2="{x(t)}" y1="{TOP}" y2="{HEIGHT - BOTTOM}" {GRID}/>')
        out.append(f'<text {TICK} x="{x(t)}" y="{HEIGHT - BOTTOM + 16}" text-anchor="middle">{_fmt(t)}{x_unit}</text>')
    for t in y_ticks:
        out.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(t)}" y2="{y(t)}" {GRID}/>')
        out.append(f'<text {TICK} x="{LEFT - 6}" y="{y(t) + 4}" text-anchor="end">{_fmt(t)}×</text>')
    out.append(f'<text {LABEL} x="{(LEFT + WIDTH - RIGHT) / 2}" y="{HEIGHT - 8}" text-anchor="middle">{x_label}</text>')
    out.append(
        f'<text {LABEL} transform="translate(14 {(TOP + HEIGHT - BOTTOM) / 2}) rotate(-90)" '
        f'text-anchor="middle">{y_label}</text>'
    )
    return out


def _legend(families: set[str], lines: list[tuple[str, str]], noisy: bool = False) -> list[str]:
    """Family colours in taxonomy order, then the meaning of each line style drawn (and of a hollow point)."""
    order = list(FAMILY_COLOURS)
    left = WIDTH - RIGHT + 16
    out = [f'<text {LABEL} x="{left}" y="{TOP + 10}">family</text>']
    for i, family in enumerate(sorted(families, key=lambda f: (order.index(f) if f in order else len(order), f))):
        top = TOP + 22 + 20 * i
        colour = FAMILY_COLOURS.get(family, "#444444")
        out.append(f'<rect x="{left}" y="{top}" width="10" height="10" rx="5" fill="{colour}"/>')
        out.append(f'<text {TICK} x="{left + 16}" y="{top + 9}">{escape(family_label(family))}</text>')
    for i, (style, label) in enumerate(lines):
        top = TOP + 22 + 20 * (len(families) + i)
        out.append(f'<line x1="{left}" x2="{left + 10}" y1="{top + 5}" y2="{top + 5}" {style}/>')
        out.append(f'<text {TICK} x="{left + 16}" y="{top + 9}">{label}</text>')
    if noisy:
        top = TOP + 22 + 20 * (len(families) + len(lines))
        out.append(f'<circle cx="{left + 5}" cy="{top + 5}" r="5" stroke="#444" {NOISY}/>')
        out.append(f'<text {TICK} x="{left + 16}" y="{top + 9}">noisy (p80/p20 &gt; {NOISY_SPREAD:.0%})</text>')
    return out


@dataclass(frozen=True)
class RealizationPoint:
    theoretical: float
    measured: float
    family: str
    label: str


DIAGONAL = 'stroke="#444" stroke-dasharray="5 4"'


def realization_svg(points: Sequence[RealizationPoint], title: str, quality: str | None = None) -> Markup:
    """x: theoretical (roofline) speedup, y: measured speedup; points on the diagonal realize all of it.

    No quality is drawn; `quality` only tags the svg with the view it belongs to (data-quality).
    """
    xs = [p.theoretical for p in points]
    ys = [p.measured for p in points]
    lo, hi = min(xs + ys + [1.0]), max(xs + ys + [1.0])
    ticks = nice_ticks(lo, hi)
    x = _Scale(ticks, LEFT, WIDTH - RIGHT)
    y = _Scale(ticks, HEIGHT - BOTTOM, TOP)
    out = _frame("realization", title, quality)
    out += _axes(x, y, ticks, ticks, "×", "theoretical (roofline) speedup over dense", "measured speedup over dense")
    out.append(
        f'<line class="diagonal" x1="{x(ticks[0])}" y1="{y(ticks[0])}" x2="{x(ticks[-1])}" y2="{y(ticks[-1])}" {DIAGONAL}/>'
    )
    for p in sorted(points, key=lambda p: (p.family, p.label)):
        colour = FAMILY_COLOURS.get(p.family, "#444444")
        realized = p.measured / p.theoretical if p.theoretical else float("nan")
        tip = (
            f"{p.label}: {p.measured:.2f}× measured, {p.theoretical:.2f}× theoretical ({100 * realized:.0f} % realized)"
        )
        out.append(
            f'<circle cx="{x(p.theoretical)}" cy="{y(p.measured)}" r="5" fill="{colour}" {POINT}>'
            f"<title>{escape(tip)}</title></circle>"
        )
    out.extend(_legend({p.family for p in points}, [(DIAGONAL, "measured = theoretical")]))
    out.append("</svg>")
    return Markup("\n".join(out))
