"""The speedup-quality Pareto plot and the realization chart as inline SVG, drawn by our own code.

No plotting library and no script: the site must work offline and from any static host, and a
few dozen markers, a step line and two axes are easy to write by hand. Every piece of text is
escaped here, since the result is inserted into the page as markup.

A family has one colour and each of its methods one marker shape, so two methods of a family stay
apart; the legend names every method under its family. Each marker's group carries data-method
(the method's slug), which the page's optional script uses to highlight one method.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

from prunereg.registry.pareto import frontier

from .display import family_label

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

SHAPES = ("circle", "square", "triangle", "diamond", "triangle-down", "pentagon", "star", "hexagon")
"""Marker shapes, given to a family's methods in slug order (cycling past the eighth)."""

GRID = 'stroke="#e3e3e3"'
DENSE = 'stroke="#666" stroke-dasharray="4 3"'
FRONT = 'fill="none" stroke="#222" stroke-width="1.5"'
TICK = 'font-size="12" fill="#333"'
LABEL = 'font-size="13" fill="#111"'
LEGEND = 'font-size="12" fill="#222"'
POINT = 'fill-opacity="0.85" stroke="#fff" stroke-width="1"'
HOLLOW = 'fill="#fff" stroke-width="2"'
DASHED = 'stroke-dasharray="2 2"'
BAR = 'fill="none" stroke-width="1.5"'
FRONT_LABEL = (
    'font-size="11" fill="#222" stroke="#fafafa" stroke-width="3" stroke-linejoin="round" paint-order="stroke"'
)
"""A halo of the frame's colour keeps a label readable where it crosses the step line or an error bar."""

WIDTH, HEIGHT = 1040, 540
"""The viewBox at its smallest; it grows downwards when the legend needs more room. At the page's
width (about 1070 px) one unit is about one pixel, so the font sizes below are what a reader sees."""
LEFT, RIGHT, TOP, BOTTOM = 64, 270, 18, 52
RADIUS = 6
LEGEND_LINE = 18
LEGEND_NAME = 30
"""Characters of a method's name the legend prints; a longer one ends in … and is whole in its tooltip."""


class _Method:
    """A point's method for its marker shape and legend entry; without a slug or name, the label before " · "."""

    label: str
    method_slug: str
    method_name: str

    @property
    def method(self) -> str:
        return self.method_slug or self.label.split(" · ")[0]

    @property
    def name(self) -> str:
        return self.method_name or self.label.split(" · ")[0]


@dataclass(frozen=True)
class PlotPoint(_Method):
    quality_loss: float  # relative, 0.05 = 5 %
    speedup: float
    family: str
    label: str
    noisy: bool = False
    """Its measured speedup is too noisy to rank (display.noisy): drawn hollow and dashed, so it reads as uncertain."""
    method_slug: str = ""
    """Its method: one marker shape per method within the family colour; empty: the label before " · "."""
    method_name: str = ""
    """The method as the legend names it; empty: the label before " · "."""
    low: float | None = None
    """Lower end of the speedup's interval, drawn as an error bar with `high`; None: no interval, no bar."""
    high: float | None = None
    excluded: str | None = None
    """Why the point is left out of the Pareto front (drawn hollow, reason in its tooltip); None: eligible."""


@dataclass(frozen=True)
class RealizationPoint(_Method):
    theoretical: float
    measured: float
    family: str
    label: str
    method_slug: str = ""
    method_name: str = ""


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


class _LogScale(_Scale):
    """A loss axis read as sign(v)·log10(1 + |v|): 0, 1, 10, 100 … % at equal steps (`loss_axis`)."""

    def __init__(self, ticks: list[float], start: float, end: float):
        super().__init__([_symlog(t) for t in ticks], start, end)

    def __call__(self, value: float) -> float:
        return super().__call__(_symlog(value))


def _symlog(value: float) -> float:
    return math.copysign(math.log10(1 + abs(value)), value)


LOG_FROM = 200.0
"""A loss above this (in %) comes from a perplexity blow-up (ASVD at 80 % on LLaMA-7B reports C4 +925336 %); on a
linear axis every usable point would sit in its first pixels, so such a plot reads its losses on a log axis."""


def loss_axis(losses: list[float]) -> tuple[list[float], _Scale, str]:
    """Ticks, scale and a title suffix for the quality-loss axis (in %): linear, or log beyond LOG_FROM."""
    lo, hi = _span(losses, 0.0, 1.0)
    if hi <= LOG_FROM:
        ticks = nice_ticks(lo, hi)
        return ticks, _Scale(ticks, LEFT, WIDTH - RIGHT), ""
    decades = [10.0**i for i in range(math.ceil(math.log10(hi)) + 1)]
    below = [-t for t in reversed(decades) if t < 10 * -lo] if lo < 0 else []
    ticks = [*below, 0.0, *decades]
    return ticks, _LogScale(ticks, LEFT, WIDTH - RIGHT), " (log scale)"


def _span(values: list[float], floor: float, ceiling: float) -> tuple[float, float]:
    """The data range, always showing `floor` (no loss) and `ceiling` (dense speed)."""
    return min(values + [floor]), max(values + [ceiling])


def marker_shapes(methods: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Method slug -> shape, from (family, slug) pairs: within each family its methods in slug order take SHAPES
    in turn. Given every method of a site (`shapes` of the plots), a method keeps its shape on every plot."""
    by_family: dict[str, set[str]] = defaultdict(set)
    for family, method in methods:
        by_family[family].add(method)
    return {m: SHAPES[i % len(SHAPES)] for slugs in by_family.values() for i, m in enumerate(sorted(slugs))}


def _shapes(points: Sequence[PlotPoint | RealizationPoint], shapes: Mapping[str, str] | None) -> dict[str, str]:
    """`shapes` where it names the method, else the shapes of this plot's methods alone."""
    return {**marker_shapes((p.family, p.method) for p in points), **(shapes or {})}


def _polygon(cx: float, cy: float, radii: Sequence[float], turn: float) -> str:
    """A closed polygon whose vertices sit at `radii` around (cx, cy), the first `turn` degrees from east."""
    corners = []
    for i, r in enumerate(radii):
        angle = math.radians(turn + 360 * i / len(radii))
        corners.append(f"{cx + r * math.cos(angle):.2f} {cy + r * math.sin(angle):.2f}")
    return "M" + " L".join(corners) + " Z"


def marker_path(shape: str, cx: float, cy: float, r: float = RADIUS) -> str:
    """The path data of one marker; the polygons are sized to look about as large as the circle."""
    if shape == "circle":
        return f"M{cx - r:.2f} {cy:.2f} a{r} {r} 0 1 0 {2 * r} 0 a{r} {r} 0 1 0 {-2 * r} 0 Z"
    polygons = {
        "square": ([1.2 * r] * 4, 45),
        "triangle": ([1.45 * r] * 3, -90),
        "diamond": ([1.35 * r] * 4, -90),
        "triangle-down": ([1.45 * r] * 3, 90),
        "pentagon": ([1.2 * r] * 5, -90),
        "star": ([1.55 * r, 0.65 * r] * 5, -90),
        "hexagon": ([1.15 * r] * 6, 0),
    }
    radii, turn = polygons[shape]
    return _polygon(cx, cy, radii, turn)


def _colour(family: str) -> str:
    return FAMILY_COLOURS.get(family, "#444444")


def _marker(shape: str, cx: float, cy: float, colour: str, hollow: bool = False, dashed: bool = False) -> str:
    style = f'stroke="{colour}" {HOLLOW}' + (f" {DASHED}" if dashed else "") if hollow else f'fill="{colour}" {POINT}'
    return f'<path class="marker" data-shape="{shape}" d="{marker_path(shape, cx, cy)}" {style}/>'


QUALITY_AXIS = {
    "measured": "measured quality loss relative to dense (%), lower is better",
    "reported": "reported quality loss (papers' tables, %), lower is better",
}
"""The x axis names its kind of quality: a reported and a measured plot must not read alike."""


def _interval(p: PlotPoint) -> tuple[float, float] | None:
    return (p.low, p.high) if p.low is not None and p.high is not None else None


def pareto_svg(
    points: Sequence[PlotPoint], title: str, quality: str = "measured", shapes: Mapping[str, str] | None = None
) -> Markup:
    """x: relative quality loss in %, y: speedup over dense; the front of the eligible points as a step line.

    `quality` ("measured" or "reported") becomes the svg's data-quality and names the x axis. A point
    with an interval gets a vertical error bar; an excluded point is drawn hollow and left off the front.
    `shapes` (method slug -> shape, `marker_shapes` of the whole site) keeps a method's marker alike across plots.
    """
    xs = [100 * p.quality_loss for p in points]
    ys = [p.speedup for p in points] + [v for p in points if (i := _interval(p)) for v in i]
    x_ticks, x, x_scale = loss_axis(xs)
    y_ticks = nice_ticks(*_span(ys, 1.0, 1.0))
    y = _Scale(y_ticks, HEIGHT - BOTTOM, TOP)
    shapes = _shapes(points, shapes)
    legend, height = _legend(points, shapes, _pareto_styles(points))
    out = _frame("pareto", title, height, quality)
    x_label = QUALITY_AXIS[quality] + x_scale
    out += _axes(x, y, x_ticks, y_ticks, "", x_label, "measured speedup over dense, higher is better")
    out.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(1.0)}" y2="{y(1.0)}" {DENSE}/>')
    front = frontier([p for p in points if p.excluded is None])
    if front:
        steps = [f"M{x(100 * front[0].quality_loss)} {y(front[0].speedup)}"]
        steps += [f"H{x(100 * p.quality_loss)} V{y(p.speedup)}" for p in front[1:]]
        out.append(f'<path class="frontier" d="{" ".join(steps)}" {FRONT}/>')
    for p in sorted(points, key=lambda p: (p.family, p.method, p.label)):
        colour, cx, cy = _colour(p.family), x(100 * p.quality_loss), y(p.speedup)
        tip = f"{p.label}: {100 * p.quality_loss:.2f} % loss, {p.speedup:.2f}× speedup"
        interval = _interval(p)
        if interval:
            tip += f" (interval {interval[0]:.2f}–{interval[1]:.2f}×)"
        tip += " (noisy)" if p.noisy else ""
        tip += f"; left out of the front: {p.excluded}" if p.excluded else ""
        excluded = "" if p.excluded is None else f' data-excluded="{escape(p.excluded)}"'
        out.append(
            f'<g class="point" data-method="{escape(p.method)}" data-family="{escape(p.family)}"{excluded}>'
            f"<title>{escape(tip)}</title>"
        )
        if interval:
            lo, hi = y(interval[0]), y(interval[1])
            out.append(
                f'<path class="error-bar" d="M{cx} {lo} V{hi} M{cx - 4} {lo} H{cx + 4} M{cx - 4} {hi} H{cx + 4}" '
                f'stroke="{colour}" {BAR}/>'
            )
        hollow = p.noisy or p.excluded is not None
        dashed = p.noisy and p.excluded is None  # noisy and still ranked: the theoretical axis ignores latency noise
        out.append(_marker(shapes[p.method], cx, cy, colour, hollow, dashed) + "</g>")
    obstacles = [_box(x(100 * p.quality_loss), y(p.speedup), RADIUS + 2) for p in points]
    for p, (lx, ly, anchor) in zip(front, _place_labels(front, x, y, obstacles), strict=True):
        # the points a reader looks for are named on the plot, not only on hover
        out.append(
            f'<text class="front-label" data-method="{escape(p.method)}" {FRONT_LABEL} x="{lx}" y="{ly}" '
            f'text-anchor="{anchor}">{escape(p.label)}</text>'
        )
    out.extend(legend)
    out.append("</svg>")
    return Markup("\n".join(out))


def _pareto_styles(points: Sequence[PlotPoint]) -> list[tuple[str, str]]:
    """The legend's entries after the methods: each line and marker style the plot draws, and what it means."""
    styles = [("front", "Pareto front"), ("dense", "dense speed (1×)")]
    if any(_interval(p) for p in points):
        styles.append(("bar", "speedup interval"))
    if any(p.excluded is not None for p in points):
        styles.append(("hollow", "hollow: left out of the front (reason in tooltip)"))
    if any(p.noisy and p.excluded is None for p in points):
        styles.append(("dashed", "dashed: noisy measured speedup"))
    return styles


Box = tuple[float, float, float, float]
CHAR_WIDTH = 6.0
"""About the width of one character at the front labels' 11 px, enough to keep two labels apart."""


def _box(cx: float, cy: float, half: float) -> Box:
    return (cx - half, cy - half, cx + half, cy + half)


def _overlaps(a: Box, b: Box) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _place_labels(front: Sequence[PlotPoint], x: _Scale, y: _Scale, obstacles: list[Box]) -> list[tuple]:
    """(x, y, text-anchor) per front point: the first of a few offsets around its marker (above right, below
    right, above left, below left, then further up or down) whose text box stays in the frame and clear of the
    markers and of the labels placed before it; the first offset when none is."""
    placed: list[tuple] = []
    taken = list(obstacles)
    for p in front:
        cx, cy = x(100 * p.quality_loss), y(p.speedup)
        width = CHAR_WIDTH * len(p.label)
        offsets = [(9, -9), (9, 17), (-9, -9), (-9, 17)]
        offsets += [(dx, dy + sign * 14 * k) for k in (1, 2, 3) for sign in (-1, 1) for dx, dy in offsets[:1]]
        chosen = None
        for dx, dy in offsets:
            left = cx + dx if dx > 0 else cx + dx - width
            box = (left, cy + dy - 11, left + width, cy + dy + 3)
            inside = LEFT <= box[0] and box[2] <= WIDTH - RIGHT and TOP <= box[1] and box[3] <= HEIGHT - BOTTOM
            if inside and not any(_overlaps(box, t) for t in taken):
                chosen = (round(cx + dx, 2), round(cy + dy, 2), "start" if dx > 0 else "end")
                taken.append(box)
                break
        placed.append(chosen or (round(cx + 9, 2), round(cy - 9, 2), "start"))
    return placed


def _frame(kind: str, title: str, height: int, quality: str | None = None) -> list[str]:
    tag = "" if quality is None else f' data-quality="{escape(quality)}"'
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="{kind}"{tag} viewBox="0 0 {WIDTH} {height}" '
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
        out.append(f'<text {TICK} x="{x(t)}" y="{HEIGHT - BOTTOM + 18}" text-anchor="middle">{_fmt(t)}{x_unit}</text>')
    for t in y_ticks:
        out.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(t)}" y2="{y(t)}" {GRID}/>')
        out.append(f'<text {TICK} x="{LEFT - 7}" y="{y(t) + 4}" text-anchor="end">{_fmt(t)}×</text>')
    out.append(
        f'<text {LABEL} x="{(LEFT + WIDTH - RIGHT) / 2}" y="{HEIGHT - 12}" text-anchor="middle">{x_label}</text>'
    )
    out.append(
        f'<text {LABEL} transform="translate(16 {(TOP + HEIGHT - BOTTOM) / 2}) rotate(-90)" '
        f'text-anchor="middle">{y_label}</text>'
    )
    return out


def _short(name: str) -> str:
    return name if len(name) <= LEGEND_NAME else name[: LEGEND_NAME - 1] + "…"


def _legend(
    points: Sequence[PlotPoint | RealizationPoint], shapes: dict[str, str], styles: list[tuple[str, str]]
) -> tuple[list[str], int]:
    """Families in taxonomy order, each with its colour and its methods' shapes by name, then each style drawn;
    and the svg's height, grown past HEIGHT when the legend is longer than the plot."""
    order = list(FAMILY_COLOURS)
    names: dict[str, dict[str, str]] = defaultdict(dict)
    for p in points:
        names[p.family].setdefault(p.method, p.name)
    left = WIDTH - RIGHT + 18
    out = [f'<g class="legend"><text {LABEL} x="{left}" y="{TOP + 10}">family · method</text>']
    top = TOP + 22
    for family in sorted(names, key=lambda f: (order.index(f) if f in order else len(order), f)):
        colour = _colour(family)
        out.append(
            f'<g class="legend-family" data-family="{escape(family)}">'
            f'<rect x="{left}" y="{top}" width="10" height="10" fill="{colour}"/>'
            f'<text {LEGEND} font-weight="600" x="{left + 16}" y="{top + 9}">{escape(family_label(family))}</text></g>'
        )
        top += LEGEND_LINE
        for method, name in sorted(names[family].items()):
            out.append(
                f'<g class="legend-method" data-method="{escape(method)}" data-family="{escape(family)}">'
                f"<title>{escape(name)}</title>{_marker(shapes[method], left + 21, top + 5, colour)}"
                f'<text {LEGEND} x="{left + 32}" y="{top + 9}">{escape(_short(name))}</text></g>'
            )
            top += LEGEND_LINE
    top += 6
    for style, label in styles:
        first, *rest = _wrapped(label)
        more = "".join(f'<tspan x="{left + 16}" dy="{LEGEND_LINE - 4}">{line}</tspan>' for line in rest)
        out.append(f'<g class="legend-style" data-style="{style}">{_sample(style, left, top)}')
        out.append(f'<text {LEGEND} x="{left + 16}" y="{top + 9}">{first}{more}</text></g>')
        top += LEGEND_LINE + (LEGEND_LINE - 4) * len(rest)
    out.append("</g>")
    return out, max(HEIGHT, top + 8)


def _wrapped(label: str, width: int = LEGEND_NAME + 4) -> list[str]:
    """The label in lines of at most `width` characters, broken at spaces, each but the last ending in one
    (so that the text element's text reads as the whole label)."""
    lines = [""]
    for word in label.split(" "):
        if lines[-1] and len(lines[-1]) + len(word) > width:
            lines.append("")
        lines[-1] += word + " "
    return [line if i < len(lines) - 1 else line.rstrip() for i, line in enumerate(lines)]


def _sample(style: str, left: float, top: float) -> str:
    """A small drawing of one style for the legend."""
    lines = {"front": FRONT, "dense": DENSE, "diagonal": DIAGONAL}
    if style in lines:
        return f'<line x1="{left}" x2="{left + 10}" y1="{top + 5}" y2="{top + 5}" {lines[style]}/>'
    if style == "bar":
        return f'<path d="M{left + 5} {top} V{top + 10} M{left + 1} {top} H{left + 9} M{left + 1} {top + 10} H{left + 9}" stroke="#444" {BAR}/>'
    return _marker("circle", left + 5, top + 5, "#444", hollow=True, dashed=style == "dashed")


DIAGONAL = 'stroke="#444" stroke-dasharray="5 4"'


def realization_svg(
    points: Sequence[RealizationPoint], title: str, quality: str | None = None, shapes: Mapping[str, str] | None = None
) -> Markup:
    """x: theoretical (roofline) speedup, y: measured speedup; points on the diagonal realize all of it.

    No quality is drawn; `quality` only tags the svg with the view it belongs to (data-quality); `shapes` as
    for `pareto_svg`.
    """
    xs = [p.theoretical for p in points]
    ys = [p.measured for p in points]
    lo, hi = min(xs + ys + [1.0]), max(xs + ys + [1.0])
    ticks = nice_ticks(lo, hi)
    x = _Scale(ticks, LEFT, WIDTH - RIGHT)
    y = _Scale(ticks, HEIGHT - BOTTOM, TOP)
    shapes = _shapes(points, shapes)
    legend, height = _legend(points, shapes, [("diagonal", "measured = theoretical")])
    out = _frame("realization", title, height, quality)
    out += _axes(x, y, ticks, ticks, "×", "theoretical (roofline) speedup over dense", "measured speedup over dense")
    out.append(
        f'<line class="diagonal" x1="{x(ticks[0])}" y1="{y(ticks[0])}" x2="{x(ticks[-1])}" y2="{y(ticks[-1])}" {DIAGONAL}/>'
    )
    for p in sorted(points, key=lambda p: (p.family, p.method, p.label)):
        realized = p.measured / p.theoretical if p.theoretical else float("nan")
        tip = (
            f"{p.label}: {p.measured:.2f}× measured, {p.theoretical:.2f}× theoretical ({100 * realized:.0f} % realized)"
        )
        out.append(
            f'<g class="point" data-method="{escape(p.method)}" data-family="{escape(p.family)}">'
            f"<title>{escape(tip)}</title>"
            f"{_marker(shapes[p.method], x(p.theoretical), y(p.measured), _colour(p.family))}</g>"
        )
    out.extend(legend)
    out.append("</svg>")
    return Markup("\n".join(out))
