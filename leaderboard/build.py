"""Build the static leaderboard from the registry: plain files that work offline on any host.

Two kinds of quality, never on one plot or table (each plot, table and section says which with
data-quality and in words): "reported" joins a paper's claim with the latency prunereg measured for
that operating point on the claim's base model's shapes; "measured" is what prunereg measured on the
run's own model. index.html is the headline: the reported-quality frontier and transition bands of the
base model most claims are about, with the realization per family of the model timed for it, and the
methods list. reported.html holds every reported-quality group (one-shot claims first, then claims that
include recovery fine-tuning, apart and labelled), each row with the paper's arXiv id, table and row as
printed. measured.html holds the harness tables (each point's realization under every execution mode
measured, side by side) and, per comparable group, a Pareto plot, a realization chart (measured against
theoretical speedup), the transition bands and a table. methods/<slug>.html is one page per method;
data/leaderboard.json the measured rows and data/reported.json the reported ones (sorted, for golden
tests and reuse). Given the submissions folder, a method page marks each submission version "current"
(the spec hash of submissions/<slug>.json) or "superseded" (that of a verbatim copy in
submissions/superseded/<slug>/, whose results stay valid measurements of that version), current first;
the rows and plots do not depend on it. A first build (or `full`) writes a fresh folder that replaces the
earlier one whole (prunereg.outputs); a later one renders only the pages whose content changed
(leaderboard/incremental.py). Jinja autoescapes every .html template, so submission text can
never become markup. The pages read completely without script; static/leaderboard.js (ours, no
third-party code, no network) only adds the scenario selector and sortable tables.
"""

from __future__ import annotations

import functools
import hashlib
import json
import operator
import re
import shutil
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from jinja2 import Environment, FileSystemBytecodeCache, FileSystemLoader, StrictUndefined, select_autoescape
from markupsafe import Markup
from sqlalchemy import Engine

from prunereg import __version__
from prunereg.outputs import SITE_MARKER, check_output, replaced_folder
from prunereg.registry.analysis import Band, Realization, realization_by_family, transition_bands
from prunereg.registry.harness import HarnessTable, harness_tables
from prunereg.registry.pareto import Axes, axes, ranked
from prunereg.registry.queries import (
    Failure,
    GroupCensus,
    GroupKey,
    MethodSummary,
    ReportedRow,
    Row,
    SpeedupKind,
    failures,
    group_census,
    leaderboard_rows,
    method_detail,
    method_fingerprints,
    methods,
    reported_rows,
)
from prunereg.spec.catalog import models
from prunereg.spec.results import EXECUTION_MODES
from prunereg.spec.sweep import FAILURE_KINDS
from prunereg.spec.taxonomy import GEMM_SHAPES, Gemm
from prunereg.spec.validate import SUPERSEDED, validate_file

from . import display
from .incremental import MANIFEST, SiteWriter, content_hash, earlier_units
from .plot import PlotPoint, RealizationPoint, marker_shapes, pareto_svg, realization_svg

HERE = Path(__file__).parent
P = TypeVar("P")
DIMENSION_INDEX = {"M": 0, "K": 1, "N": 2}


@dataclass(frozen=True)
class Group:
    anchor: str
    title: str
    rows: list[Row]
    plot: Markup | None
    unplotted: int
    realization: Markup | None
    bands: list[Band]
    phase: str
    batch_size: int
    device_name: str
    execution_mode: str
    failed: list[Failure] = field(default_factory=list)
    """Points of this group that could not be measured (and no later run measured): a row each, never left out."""
    slug: str = ""
    """Its pages' file name (groups/<slug>.html), from its key alone."""
    undrawn: int = 0
    """Rated points the Pareto plot leaves out because a drawn point is within a pixel of them (`_drawn`)."""
    total: int = 0
    """Its rows: measured.html lists a group of the large layout with its count, without reading its rows."""


@dataclass(frozen=True)
class Selector:
    """One <select> of the scenario selector: the values the groups take on one axis."""

    name: str
    label: str
    options: list[str]


def _selectors(groups: list[Group]) -> list[Selector]:
    choices: list[tuple[str, str, Callable[[Group], str], Callable[[str], Any]]] = [
        ("phase", "Phase", lambda g: g.phase, lambda v: (v != "prefill", v)),
        ("batch", "Batch size", lambda g: str(g.batch_size), int),
        ("device", "Device", lambda g: g.device_name, str),
        ("mode", "Execution mode", lambda g: g.execution_mode, str),
    ]
    return [
        Selector(name, label, sorted({value(g) for g in groups}, key=order)) for name, label, value, order in choices
    ]


def _title(parts: tuple[str, ...], phase: str, batch_size: int, seq_len: int) -> str:
    """'Llama 3.1 8B · NVIDIA H200 · bfloat16 · eager · decode, batch 1, 4096-token context'."""
    model = models().get(parts[0])
    length = f"{seq_len} prompt tokens" if phase == "prefill" else f"{seq_len}-token context"
    return " · ".join([model.label if model else parts[0], *parts[1:], f"{phase}, batch {batch_size}, {length}"])


def _harness(rows: list[Row]) -> list[tuple[str, HarnessTable]]:
    if len({r.execution_mode for r in rows}) < 2:
        return []  # a table needs two modes of one scenario
    return [(_title(t.key[:3], t.phase, t.batch_size, t.seq_len), t) for t in harness_tables(rows)]


def _plot_point(r: Row, a: Axes, speedup: SpeedupKind) -> PlotPoint:
    """A row on its group's Pareto plot, placed by its ranking axes and drawn with its method's marker; the
    measured speedup's interval as an error bar (only on the measured axis), hollow when left out of the front."""
    low, high = (r.speedup_low, r.speedup_high) if speedup == "measured" else (None, None)
    return PlotPoint(
        a.quality_loss, a.speedup, r.family, f"{r.method_name} · {r.operating_point}", display.noisy(r),
        r.method_slug, r.method_name, low, high, r.excluded,
    )  # fmt: skip


def _group_entries(
    rows: list[Row], failed: Sequence[Failure] = ()
) -> list[tuple[str, GroupKey, list[Row], list[Failure]]]:
    """(anchor, key, rows, failures) per comparable group, groups with measured quality first; failures join the group
    their row would have been in, and a group of failures only is listed after the measured ones."""
    grouped: dict[GroupKey, list[Row]] = defaultdict(list)
    for row in rows:
        grouped[row.group].append(row)
    failed_in = _failed_in(failed)
    with_quality_first = sorted(grouped.items(), key=lambda kv: all(r.quality_loss is None for r in kv[1]))
    entries = [(key, members, failed_in.pop(key, [])) for key, members in with_quality_first]
    only_failed = sorted(failed_in.items(), key=lambda kv: (kv[0][:4], kv[1][0].phase != "prefill", kv[0].scenario))
    entries += [(key, [], failed_here) for key, failed_here in only_failed]
    return [(f"group-{i}", key, members, failed_here) for i, (key, members, failed_here) in enumerate(entries, 1)]


def _failed_in(failed: Sequence[Failure]) -> dict[GroupKey, list[Failure]]:
    """Per group, one row per point and scenario that failed: its latest failure (the method page has all)."""
    latest = {(f.spec_hash, f.operating_point, f.group): f for f in failed if not f.superseded}  # oldest first
    failed_in: dict[GroupKey, list[Failure]] = defaultdict(list)
    for failure in latest.values():
        failed_in[failure.group].append(failure)
    return failed_in


def _scenario(key: GroupKey, members: list[Row], failed: list[Failure]) -> tuple[str, int, str, str]:
    one = members[0] if members else failed[0]
    return one.phase, one.batch_size, key.device_name, key.execution_mode


def _group_title(key: GroupKey, members: list[Row], failed: list[Failure]) -> str:
    one = members[0] if members else failed[0]
    return _title(key[:4], one.phase, one.batch_size, one.seq_len)  # the key without its scenario


def _table_order(members: list[Row]) -> list[Row]:
    return sorted(members, key=lambda r: (r.quality_loss is None, r.quality_loss or 0.0, -r.speedup))


def _drawn(points: list[P], x: Callable[[P], float], y: Callable[[P], float], keep: set[int]) -> list[P]:
    """At most DRAWN of `points` (and every index in `keep`): the first point of each cell of a grid over the plot,
    the grid coarsened until few enough are left. A chart of thousands of points shows no more than this at its size."""
    if len(points) <= DRAWN:
        return points
    xs, ys = [x(p) for p in points], [y(p) for p in points]
    left, bottom = min(xs), min(ys)
    width, height = (max(xs) - left) or 1.0, (max(ys) - bottom) or 1.0
    cells = 256
    while True:
        seen: set[tuple[int, int]] = set()
        chosen = []
        for i, p in enumerate(points):
            cell = (int((xs[i] - left) / width * cells), int((ys[i] - bottom) / height * cells))
            if i in keep or cell not in seen:
                seen.add(cell)
                chosen.append(p)
        if len(chosen) <= DRAWN or cells == 1:
            return chosen
        cells //= 2


def _group(
    anchor: str,
    slug: str,
    key: GroupKey,
    members: list[Row],
    failed: list[Failure],
    speedup: SpeedupKind,
    shapes: Mapping[str, str] | None = None,
) -> Group:
    """One group with its plots and bands, points thinned to what a chart can show (`_drawn`); `shapes`: the
    site's marker per method (plot.marker_shapes), so a method looks alike on every plot."""
    title = _group_title(key, members, failed)
    if not members:
        return Group(anchor, title, [], None, 0, None, [], *_scenario(key, members, failed), failed, slug)
    ordered = _table_order(members)
    rated = [r for r in ordered if axes(r, speedup) is not None]
    front = {i for i, r in enumerate(rated) if r.pareto}
    shown = _drawn(rated, lambda r: r.quality_loss or 0.0, lambda r: axes(r, speedup).speedup, front)  # type: ignore[union-attr]
    points = [_plot_point(r, a, speedup) for r in shown if (a := axes(r, speedup)) is not None]
    plot = pareto_svg(points, title, "measured", shapes) if points else None
    charted = _drawn(ordered, lambda r: r.theoretical_speedup, lambda r: r.speedup, set())
    realization = realization_svg(
        [
            RealizationPoint(
                r.theoretical_speedup,
                r.speedup,
                r.family,
                f"{r.method_name} · {r.operating_point}",
                method_slug=r.method_slug,
                method_name=r.method_name,
            )
            for r in charted
        ],
        f"Realization: {title}",
        "measured",
        shapes,
    )
    bands = transition_bands(members, speedup=speedup) if points else []
    return Group(
        anchor, title, ordered, plot, len(members) - len(rated), realization, bands,
        *_scenario(key, members, failed), failed, slug, len(rated) - len(shown),
    )  # fmt: skip


def _groups(rows: list[Row], speedup: SpeedupKind, failed: Sequence[Failure] = ()) -> list[Group]:
    """The comparable groups with their plots and bands (`_group_entries`' order)."""
    return [
        _group(anchor, _slug(key), key, members, failed_here, speedup)
        for anchor, key, members, failed_here in _group_entries(rows, failed)
    ]


@dataclass(frozen=True)
class ReportedGroup:
    """One reported-quality group (`ReportedRow.group`), of one-shot claims or of claims with recovery, never both."""

    key: GroupKey
    anchor: str
    title: str
    task: str
    rows: list[ReportedRow]
    plot: Markup
    bands: list[Band]
    recovery: bool
    timed_model: str
    timed_label: str
    phase: str
    batch_size: int
    device_name: str
    execution_mode: str


def _label(model: str) -> str:
    known = models().get(model)
    return known.label if known else model


def _reported_groups(
    rows: Sequence[ReportedRow], speedup: SpeedupKind, prefix: str, shapes: Mapping[str, str] | None = None
) -> list[ReportedGroup]:
    """A plot, bands and rows per group, by base model, task, device, dtype, mode and scenario (prefill first)."""
    grouped: dict[GroupKey, list[ReportedRow]] = defaultdict(list)
    for row in rows:
        grouped[row.group].append(row)

    def order(item: tuple[GroupKey, list[ReportedRow]]) -> tuple:
        key, (first, *_) = item
        return (key.model, key.task or "", key.device_name, key.dtype, key.execution_mode,
                first.phase != "prefill", first.batch_size, first.seq_len)  # fmt: skip

    groups = []
    for i, (key, members) in enumerate(sorted(grouped.items(), key=order)):
        first = members[0]
        title = _title(key[:4], first.phase, first.batch_size, first.seq_len)  # the base model, not the timed one
        points = [_plot_point(r, a, speedup) for r in members if (a := axes(r, speedup)) is not None]
        ordered = sorted(members, key=lambda r: (r.quality_loss, -r.speedup, r.method_slug, r.operating_point))
        group = ReportedGroup(
            key, f"{prefix}-{i + 1}", title, key.task or "", ordered,
            pareto_svg(points, f"{title} · {key.task}: reported quality", "reported", shapes),
            transition_bands(members, speedup=speedup), first.recovery is not None, first.model, _label(first.model),
            first.phase, first.batch_size, key.device_name, key.execution_mode,
        )  # fmt: skip
        groups.append(group)
    return groups


def split_recovery(rows: Sequence[ReportedRow], speedup: SpeedupKind) -> tuple[list[ReportedRow], list[ReportedRow]]:
    """One-shot rows and rows whose claim includes recovery fine-tuning, each ranked among themselves:
    a point that was trained after pruning must not push a one-shot point off its front."""
    one_shot = ranked([r for r in rows if r.recovery is None], speedup)
    recovered = ranked([r for r in rows if r.recovery is not None], speedup)
    return one_shot, recovered


class HeadlineChoice(NamedTuple):
    base_model: str
    task: str
    device_name: str
    dtype: str
    execution_mode: str


def _most(values: Sequence[Any], prefer: Callable[[Any], int] = lambda value: 0) -> Any:
    """The most frequent value; a tie goes to the highest `prefer`, then to the first in sort order, so the choice
    does not depend on row order."""
    counts: dict[Any, int] = defaultdict(int)
    for value in values:
        counts[value] += 1
    return max(sorted(counts), key=lambda value: (counts[value], prefer(value)))


def headline_choice(rows: Sequence[ReportedRow]) -> HeadlineChoice | None:
    """What the landing view shows: the base model with the most one-shot reported rows, its task with the most
    rows, and the device, dtype and execution mode with the most rows of that task, the fastest mode on a tie (the
    headline is measured in the best mode there is); None without one-shot rows."""
    chosen = [r for r in rows if r.recovery is None]
    if not chosen:
        return None
    base = _most([r.base_model for r in chosen])
    chosen = [r for r in chosen if r.base_model == base]
    task = _most([r.task for r in chosen])
    chosen = [r for r in chosen if r.task == task]
    combos = [(r.device_name, r.dtype, r.execution_mode) for r in chosen]
    device, dtype, mode = _most(combos, prefer=lambda combo: list(EXECUTION_MODES).index(combo[2]))
    return HeadlineChoice(base, task, device, dtype, mode)


@dataclass(frozen=True)
class Headline:
    """The landing view: one base model, task, device, dtype and mode, its groups and the realization behind them."""

    choice: HeadlineChoice
    base_label: str
    timed_model: str
    timed_label: str
    groups: list[ReportedGroup]
    rows_at: dict[GroupKey, str]
    """Each group's anchor on reported.html, where its rows and their sources are."""
    realization: list[tuple[str, int, list[Realization]]]
    """(phase, batch size, per family) for the timed model on the headline's device, dtype and mode."""


def _headline(
    choice: HeadlineChoice,
    one_shot: list[ReportedGroup],
    measured: Sequence[Row],
    speedup: SpeedupKind,
    shapes: Mapping[str, str] | None = None,
) -> Headline:
    c = choice
    rows = [
        r for g in one_shot for r in g.rows
        if (r.base_model, r.task, r.device_name, r.dtype, r.execution_mode) == c
    ]  # fmt: skip
    timed = min(r.model for r in rows)  # one per base model (queries._timed_as)
    same_runs = [
        r for r in measured
        if (r.model, r.device_name, r.dtype, r.execution_mode) == (timed, c.device_name, c.dtype, c.execution_mode)
    ]  # fmt: skip
    by_scenario: dict[tuple[str, int], list[Realization]] = defaultdict(list)
    for family in realization_by_family(same_runs):
        by_scenario[(family.phase, family.batch_size)].append(family)
    realization = [
        (phase, batch, families)
        for (phase, batch), families in sorted(by_scenario.items(), key=lambda kv: (kv[0][0] != "prefill", kv[0]))
    ]
    return Headline(
        choice, _label(c.base_model), timed, _label(timed), _reported_groups(rows, speedup, "headline", shapes),
        {g.key: g.anchor for g in one_shot}, realization,
    )  # fmt: skip


def _times(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}×"


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f} %"


def _ms(value: float) -> str:
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def _calibration(record: dict[str, Any] | None) -> str:
    """'32 × 256 tokens of embedded-train (seed 0), 1.4 s': a run's CalibrationRecord, or 'none'."""
    if record is None:
        return "none"
    seconds = record["seconds"]
    took = f"{seconds:.0f}" if seconds >= 10 else f"{seconds:.1f}" if seconds >= 1 else f"{seconds:.2g}"
    return f"{record['sequences']} × {record['length']} tokens of {record['dataset']} (seed {record['seed']}), {took} s"


def _param(value: Any) -> str:
    if isinstance(value, str):
        return value
    return _number(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else json.dumps(value)


def _dimension(gemm: str, dimension: str) -> str:
    """'M (tokens)': the dimension named as the paper's GEMM table names it."""
    try:
        return f"{dimension} ({GEMM_SHAPES[Gemm(gemm)][DIMENSION_INDEX[dimension]]})"
    except (ValueError, KeyError):
        return dimension


def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        bytecode_cache=FileSystemBytecodeCache(),  # compiled templates in the user's temporary folder, keyed by source
        autoescape=select_autoescape(["html"]),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(times=_times, percent=_percent, ms=_ms, number=_number, param=_param, dimension=_dimension)
    env.filters["calibration"] = _calibration
    env.filters.update(
        family_label=display.family_label,
        kernel_note=display.kernel_note,
        gpu_change=display.gpu_change,
        unaligned_note=display.unaligned_note,
    )
    env.filters["recovery_note"] = display.recovery_note
    env.tests["noisy"] = display.noisy
    env.filters["noise"] = display.noise_reason
    env.filters["when"] = display.when
    env.globals["quality"] = display.QUALITY_TEXT
    env.globals["version"] = __version__
    return env


def _json_for_web(document: Any) -> str:
    """JSON that stays inert wherever it is pasted: <, > and & become \\u escapes."""
    text = json.dumps(document, indent=1, sort_keys=True, ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026") + "\n"


def _rounded(value: Any) -> Any:
    return float(f"{value:.6g}") if isinstance(value, float) else value


NOT_IN_JSON = ("environment", "kernels", "unaligned", "calibration", "checkpoint")
"""Per-run data repeated on every row; the method pages show it once per run, keyed by environment_key."""


_kernel_note = functools.cache(display.kernel_note)


_FIELDS: dict[type, tuple[str, ...]] = {}


def _row_fields(kind: type) -> tuple[str, ...]:
    if kind not in _FIELDS:
        _FIELDS[kind] = tuple(f.name for f in fields(kind))
    return _FIELDS[kind]


def _json_row(row: Row) -> dict[str, Any]:
    data = {name: getattr(row, name) for name in _row_fields(type(row)) if name not in NOT_IN_JSON}
    data.update(family_label=display.family_label(row.family), kernel_note=_kernel_note(row.kernels), spread=row.spread)
    return {k: _rounded(v) for k, v in data.items()}


def _json_reported_row(row: ReportedRow) -> dict[str, Any]:
    """A measured row's fields with the claim's (base model, task, values, source, recovery), marked reported."""
    return {**_json_row(row), "quality": "reported"}


def submission_versions(submissions: Path | None, slug: str) -> dict[str, str]:
    """Spec hash -> "current" (submissions/<slug>.json) or "superseded" (a valid regular file in
    submissions/superseded/<slug>/, as ingestion accepts it); hashes in neither are left out."""
    if submissions is None:
        return {}
    versions: dict[str, str] = {}
    folder = submissions / SUPERSEDED / slug
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        earlier, _ = validate_file(path) if path.is_file() and not path.is_symlink() else (None, [])
        if earlier is not None:
            versions[earlier.spec_hash()] = "superseded"
    path = submissions / f"{slug}.json"
    current, _ = validate_file(path) if path.is_file() else (None, [])
    if current is not None:
        versions[current.spec_hash()] = "current"
    return versions


PAGE_ROWS = 500
"""Rows per page of a group's table: a group of thousands of points is split into pages at build time."""
INLINE_ROWS = 1000
"""measured.html shows every group whole, plots and tables, while the registry holds at most this many measured rows;
beyond, it lists the groups and each group has its own pages, so no page grows with the registry."""
METHODS_INLINE = 200
"""The landing page lists the methods while there are at most this many; beyond, a table per family and methods.html."""
DRAWN = 600
"""Most points one chart draws: beyond, points within a pixel of a drawn point are not drawn (the front always is)."""


def build_site(
    engine: Engine,
    out_dir: Path,
    speedup: SpeedupKind = "measured",
    force: bool = False,
    submissions: Path | None = None,
    full: bool = False,
) -> Path:
    """Write the site into out_dir and return the path of its index.html.

    A folder this code built before (its manifest names this prunereg and the same speedup axis) is updated in
    place: only the group and method pages whose content hash changed are rendered again, pages that no longer
    exist are removed, and the summary pages and data files are rewritten. Otherwise, or with `full`, the site is
    written into a fresh folder that replaces out_dir whole. `submissions` (the registered submissions folder) lets
    the method pages say which version of a submission is current; without it they list every version newest
    first, unmarked. In the large layout an incremental build reads only the rows of the groups whose census
    (`group_census`: per method, rows, newest ids, name and family) or failures or marker shapes changed, besides
    those the headline and harness tables need; a method page whose records and place on the fronts are unchanged is
    kept without reading its rows. Raises prunereg.outputs.OutputRefused for a link, a file, or a folder prunereg did not write
    (unless `force`).
    """
    out_dir = Path(out_dir)
    summaries = methods(engine)
    earlier = None if full else earlier_units(out_dir, speedup)
    if earlier is not None:
        check_output(out_dir, SITE_MARKER, force)
        (out_dir / MANIFEST).unlink()  # a crash from here on leaves no manifest: the next build is a full one
        _write(engine, out_dir, summaries, speedup, submissions, earlier)
    else:
        with replaced_folder(out_dir, SITE_MARKER, force) as fresh:
            _write(engine, fresh, summaries, speedup, submissions, {})
    return out_dir / "index.html"


def _row_text(row: Row) -> tuple:
    """Everything a page may show of a row, to hash: each field, the per-run dicts by the run's key, and not
    `dominated_by`, which no page shows (a group's JSON does: its hash adds them)."""
    return _hashed_fields(type(row))(row)


_HASHED: dict[type, operator.attrgetter] = {}


def _hashed_fields(kind: type) -> operator.attrgetter:
    """The hashed fields of a row class, read in one call (a tuple of them)."""
    if kind not in _HASHED:
        _HASHED[kind] = operator.attrgetter(*(f for f in _row_fields(kind) if f not in NOT_HASHED))
    return _HASHED[kind]


NOT_HASHED = ("environment", "calibration", "checkpoint", "dominated_by")
"""The run's fields, the same on each of its rows and fixed once stored (`environment_key` names them), and the
count of points that dominate a row, which one new point changes on every row below it."""


def _slug(key: GroupKey) -> str:
    """A group's file name, from its key alone, so it stays the same while other groups come and go."""
    readable = re.sub(r"[^a-z0-9.]+", "-", ".".join([key.model, key.device_name, key.dtype, key.execution_mode,
                                                    key.scenario]).lower()).strip("-")  # fmt: skip
    return f"{readable[:100]}-{hashlib.sha256(repr(tuple(key)).encode()).hexdigest()[:8]}"


@dataclass(frozen=True)
class PageOf:
    """Where one page of a paginated table stands: its number, the rows it shows and every page's link."""

    number: int
    count: int
    first: int
    last: int
    total: int
    hrefs: list[str]


def _pages(total: int, name: str, size: int) -> list[PageOf]:
    count = max(1, -(-total // size))
    hrefs = [f"{name}.html" if n == 1 else f"{name}-{n}.html" for n in range(1, count + 1)]
    return [
        PageOf(n, count, min(total, (n - 1) * size + 1), min(total, n * size), total, hrefs)
        for n in range(1, count + 1)
    ]


def _write(
    engine: Engine,
    out_dir: Path,
    summaries: list[MethodSummary],
    speedup: SpeedupKind,
    submissions: Path | None,
    earlier: dict[str, Any],
) -> None:
    env = _environment()
    site = SiteWriter(out_dir, earlier)
    for sub in ("methods", "data", "groups", "data/groups"):
        (out_dir / sub).mkdir(exist_ok=True)
    if (out_dir / "static").exists():
        shutil.rmtree(out_dir / "static")
    shutil.copytree(HERE / "static", out_dir / "static")

    census = group_census(engine)
    failed = failures(engine)
    failed_in = _failed_in(failed)
    reported = reported_rows(engine, speedup, recovery=True)
    shapes = marker_shapes(
        [
            *((m.family, m.slug) for c in census.values() for m in c.methods),
            *((r.family, r.method_slug) for r in reported),
        ]
    )
    one_shot, recovered = split_recovery(reported, speedup)
    one_shot_groups = _reported_groups(one_shot, speedup, "reported", shapes)
    choice = headline_choice(one_shot)
    inline = sum(c.rows for c in census.values()) + len(failed) <= INLINE_ROWS
    sources = {
        key: content_hash(speedup, c, failed_in.get(key, []), sorted({(m.slug, shapes[m.slug]) for m in c.methods}))
        for key, c in census.items()
    }  # what a group's pages show comes from these: unchanged, its pages are kept without reading its rows
    stored = {key: site.earlier_facts(f"group {_slug(key)}") for key in census}
    read: set[GroupKey] | None = None
    if earlier and not inline:
        read = {key for key in census if not _still(stored[key], sources[key])}
        read |= _headline_keys(choice, one_shot_groups, census) | _harness_keys(census)
        if len(read) > len(census) // 2:
            read = None  # most groups: one pass over every row is as quick
    rows = leaderboard_rows(engine, speedup, groups=read) if read is None or read else []

    headline = _headline(choice, one_shot_groups, rows, speedup, shapes) if choice else None
    page = env.get_template("index.html").render(
        root="", methods=summaries, headline=headline, speedup=speedup, methods_inline=METHODS_INLINE
    )
    site.write("index", None, {"index.html": page})
    page = env.get_template("reported.html").render(
        root="",
        one_shot=one_shot_groups,
        recovered=_reported_groups(recovered, speedup, "recovery", shapes),
        speedup=speedup,
    )
    site.write("reported", None, {"reported.html": page})

    harness = _harness(rows)
    groups: list[Group] = []
    listed: list[dict[str, Any]] = []
    fronts: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for anchor, key, members, failed_here, facts in _listed_groups(rows, read, census, stored, failed_in):
        slug = _slug(key)
        unit = f"group {slug}"
        c = census.get(key)
        if c is not None:
            title, scenario = _title(key[:4], c.phase, c.batch_size, c.seq_len), (c.phase, c.batch_size)
        else:
            title, scenario = _group_title(key, [], failed_here), _scenario(key, [], failed_here)[:2]
        if members is None:  # not read: the earlier build's pages stand
            digest = facts["hash"]
        else:
            digest = content_hash(
                speedup,
                title,
                [_row_text(r) for r in members],
                [r.dominated_by for r in members],
                failed_here,
                sorted({(r.method_slug, shapes[r.method_slug]) for r in members}),  # a new method can reshape a family
            )
            facts = {**facts, "source": sources.get(key)}
            site.note(unit, **facts)
        for method_slug, run_id in facts["front"]:
            fronts[method_slug].append((slug, run_id))
        total = c.rows if c is not None else 0
        if inline:  # measured.html shows it whole
            group = _group(anchor, slug, key, members or [], failed_here, speedup, shapes)
        else:  # measured.html lists it; its own pages draw it
            group = Group(anchor, title, [], None, 0, None, [], *scenario, key.device_name, key.execution_mode,
                          failed_here, slug, total=total)  # fmt: skip
        if not site.unchanged(unit, digest):
            assert members is not None
            if inline:
                draw: Callable[[], Group] = functools.partial(lambda g: g, group)
            else:
                draw = functools.partial(_group, anchor, slug, key, members, failed_here, speedup, shapes)
            site.later(unit, digest, functools.partial(_group_files, env, draw, key, speedup), len(members))
        groups.append(group)
        listed.append({**key._asdict(), "title": title, "rows": total, "href": f"groups/{slug}.json"})
    for i, (title, t) in enumerate(harness if not inline else [], 1):
        digest = content_hash(title, t)
        if not site.unchanged(f"harness {i}", digest):
            page = env.get_template("harness_page.html").render(root="../", title=title, t=t)
            site.write(f"harness {i}", digest, {f"groups/harness-{i}.html": page})
    page = env.get_template("measured.html").render(
        root="", groups=groups, selectors=_selectors(groups), speedup=speedup, inline=inline,
        harness=harness, modes=EXECUTION_MODES, measured_modes=sorted({k.execution_mode for k in census}),
    )  # fmt: skip
    site.write("measured", None, {"measured.html": page})

    for n, part in enumerate(_pages(len(summaries), "methods", PAGE_ROWS), 1):
        page = env.get_template("methods.html").render(
            root="", methods=summaries[part.first - 1 : part.last], page=part
        )
        site.write(f"methods list {n}", None, {part.hrefs[n - 1]: page})
    unread = {m.slug for key, c in census.items() if read is not None and key not in read for m in c.methods}
    _method_pages(engine, env, site, rows, fronts, unread, read, summaries, failed, submissions, speedup)
    site.render_all(engine)

    if inline:
        data = _rows_document({"speedup": speedup}, [_json_text(_json_row(r)) for r in rows])
    else:  # one file of every row would grow with the registry: the groups' files, listed
        data = _json_for_web({"speedup": speedup, "groups": listed})
    site.write("leaderboard.json", None, {"data/leaderboard.json": data})
    claims = sorted([*one_shot, *recovered], key=lambda r: (*r.sort_key(), r.task, r.arxiv, r.paper_table, r.value))
    reported_data = {"speedup": speedup, "quality": "reported", "rows": [_json_reported_row(r) for r in claims]}
    site.write("reported.json", None, {"data/reported.json": _json_for_web(reported_data)})
    site.finish(speedup)


def _still(stored: dict[str, Any] | None, source: str) -> bool:
    """Whether the earlier build's group unit is of this same census, with every fact `_listed_groups` reads."""
    return (
        stored is not None and stored.get("source") == source and isinstance(stored.get("hash"), str)
        and isinstance(stored.get("first"), list) and isinstance(stored.get("rated"), bool)
        and isinstance(stored.get("front"), list)
    )  # fmt: skip


def _listed_groups(
    rows: list[Row],
    read: set[GroupKey] | None,
    census: Mapping[GroupKey, GroupCensus],
    stored: Mapping[GroupKey, dict[str, Any] | None],
    failed_in: Mapping[GroupKey, list[Failure]],
) -> list[tuple[str, GroupKey, list[Row] | None, list[Failure], dict[str, Any]]]:
    """`_group_entries` of every row, with the rows of the groups read (None for the others) and each group's facts
    (its first row's sort key, whether any row has a quality, its front by method and run), those of a group not
    read as the earlier build stored them."""
    grouped: dict[GroupKey, list[Row]] = defaultdict(list)
    for row in rows:
        grouped[row.group].append(row)
    measured: list[tuple[GroupKey, list[Row] | None, dict[str, Any]]] = []
    for key in census:
        if read is None or key in read:
            members = grouped.get(key, [])
            facts = {
                "first": list(members[0].sort_key()) if members else [],
                "rated": any(r.quality_loss is not None for r in members),
                "front": sorted([r.method_slug, r.run_id] for r in members if r.pareto),
            }
            measured.append((key, members, facts))
        else:
            measured.append((key, None, dict(stored[key] or {})))
    measured.sort(key=lambda e: (not e[2]["rated"], e[2]["first"]))  # the order of `_group_entries`
    entries = [(key, members, failed_in.get(key, []), facts) for key, members, facts in measured]
    only_failed = sorted(
        ((k, f) for k, f in failed_in.items() if k not in census),
        key=lambda kv: (kv[0][:4], kv[1][0].phase != "prefill", kv[0].scenario),
    )
    empty = {"first": [], "rated": False, "front": []}
    entries += [(key, [], failed_here, empty) for key, failed_here in only_failed]
    return [(f"group-{i}", key, m, f, facts) for i, (key, m, f, facts) in enumerate(entries, 1)]


def _headline_keys(
    choice: HeadlineChoice | None, one_shot: list[ReportedGroup], census: Mapping[GroupKey, GroupCensus]
) -> set[GroupKey]:
    """The groups whose rows the headline's realization reads (`_headline`)."""
    if choice is None:
        return set()
    c = choice
    timed = min(
        r.model for g in one_shot for r in g.rows
        if (r.base_model, r.task, r.device_name, r.dtype, r.execution_mode) == c
    )  # fmt: skip
    return {k for k in census if k[:4] == (timed, c.device_name, c.dtype, c.execution_mode)}


def _harness_keys(census: Mapping[GroupKey, GroupCensus]) -> set[GroupKey]:
    """The groups of every model, device, dtype and scenario measured in two execution modes or more: the rows
    `harness_tables` sets side by side."""
    modes: dict[tuple[str, str, str, str], set[str]] = defaultdict(set)
    for k in census:
        modes[(k.model, k.device_name, k.dtype, k.scenario)].add(k.execution_mode)
    return {k for k in census if len(modes[(k.model, k.device_name, k.dtype, k.scenario)]) > 1}


def _method_pages(
    engine: Engine,
    env: Environment,
    site: SiteWriter,
    rows: list[Row],
    fronts: Mapping[str, list[tuple[str, int]]],
    unread: set[str],
    read: set[GroupKey] | None,
    summaries: list[MethodSummary],
    failed: list[Failure],
    submissions: Path | None,
    speedup: SpeedupKind,
) -> None:
    """One page per method, rendered again only where its stored records (`method_fingerprints`), versions, failures
    or rows on the fronts (`fronts`: group slug and run per method) changed: what its rows show besides comes from its
    records alone. The rows of a page to render in groups not read (`unread` methods have some) are read by method,
    on the front as the earlier build stored it."""
    by_method: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        by_method[row.method_slug].append(row)
    failed_by: dict[str, list[Failure]] = defaultdict(list)
    for failure in failed:
        failed_by[failure.method_slug].append(failure)
    stored = method_fingerprints(engine)
    todo = []
    for summary in summaries:
        slug = summary.slug
        versions = submission_versions(submissions, slug)
        digest = content_hash(
            summary, versions, stored.get(slug), failed_by.get(slug, []), sorted(fronts.get(slug, []))
        )
        if not site.unchanged(f"method {slug}", digest):
            todo.append((summary, versions, digest))
    more = [summary.slug for summary, *_ in todo if summary.slug in unread]
    if more and read is not None:
        on_front = {(group, run) for slug in more for group, run in fronts.get(slug, [])}
        slugs: dict[GroupKey, str] = {}
        for row in leaderboard_rows(engine, speedup, methods=more):
            if row.group not in read:
                group = slugs.get(row.group) or slugs.setdefault(row.group, _slug(row.group))
                by_method[row.method_slug].append(replace(row, pareto=(group, row.run_id) in on_front))
        for slug in more:
            by_method[slug].sort(key=Row.sort_key)
    for summary, versions, digest in todo:
        mine = by_method.get(summary.slug, [])
        page = functools.partial(_method_page, engine, env, summary, mine, versions, failed_by.get(summary.slug, []))
        site.later(f"method {summary.slug}", digest, page, len(mine))


def _method_page(
    engine: Engine,
    env: Environment,
    summary: MethodSummary,
    rows: list[Row],
    versions: dict[str, str],
    failed: list[Failure],
) -> dict[str, str]:
    detail = method_detail(engine, summary.slug, rows)
    current_first = sorted(detail.submissions, key=lambda s: versions.get(s.spec_hash) != "current")
    detail = replace(detail, submissions=current_first)
    current = next((h for h, v in versions.items() if v == "current"), None)
    page = env.get_template("method.html").render(
        root="../", method=detail, m=summary, versions=versions, current=current,
        failures=failed, failure_kinds=FAILURE_KINDS,
    )  # fmt: skip
    return {f"methods/{summary.slug}.html": page}


def _group_files(env: Environment, draw: Callable[[], Group], key: GroupKey, speedup: SpeedupKind) -> dict[str, str]:
    """A group's pages (its table split every PAGE_ROWS rows, charts on the first) and its rows as JSON."""
    group = draw()
    files = {}
    for part in _pages(len(group.rows), group.slug, PAGE_ROWS):
        shown = replace(group, rows=group.rows[part.first - 1 : part.last])
        files[f"groups/{part.hrefs[part.number - 1]}"] = env.get_template("group.html").render(
            root="../", g=shown, page=part, speedup=speedup
        )
    head = {"group": {**key._asdict(), "title": group.title}, "speedup": speedup, "quality": "measured"}
    rows = sorted(group.rows, key=Row.sort_key)  # the leaderboard's order, as in data/leaderboard.json
    files[f"data/groups/{group.slug}.json"] = _rows_document(head, [_json_text(_json_row(r)) for r in rows])
    return files


def _json_text(row: dict[str, Any]) -> str:
    """One row as `_json_for_web` writes it inside its "rows" list (indented by two), by the C encoder where the
    row is flat: one row costs microseconds, not the pure-Python indenting encoder's tenth of a millisecond."""
    if any(isinstance(v, (dict, list, tuple)) and v for v in row.values()):
        text = json.dumps(row, indent=1, sort_keys=True, ensure_ascii=False).replace("\n", "\n  ")
        text = "  " + text
    else:
        body = json.dumps(row, sort_keys=True, ensure_ascii=False, separators=(",\n   ", ": "))
        text = "  {\n   " + body[1:-1] + "\n  }"
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _rows_document(head: dict[str, Any], chunks: list[str]) -> str:
    """`_json_for_web({**head, "rows": rows})`, given each row's `_json_text`."""
    text = _json_for_web({**head, "rows": []})
    if not chunks:
        return text
    return text.replace(' "rows": []', ' "rows": [\n' + ",\n".join(chunks) + "\n ]", 1)
