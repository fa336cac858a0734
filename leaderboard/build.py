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
the rows and plots do not depend on it. The site is written into a fresh folder that replaces the
earlier build whole (prunereg.outputs). Jinja autoescapes every .html template, so submission text can
never become markup. The pages read completely without script; static/leaderboard.js (ours, no
third-party code, no network) only adds the scenario selector and sortable tables.
"""

from __future__ import annotations

import json
import shutil
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, NamedTuple

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from markupsafe import Markup
from sqlalchemy import Engine

from prunereg import __version__
from prunereg.outputs import SITE_MARKER, replaced_folder
from prunereg.registry.analysis import Band, Realization, realization_by_family, transition_bands
from prunereg.registry.harness import HarnessTable, harness_tables
from prunereg.registry.pareto import Axes, axes, ranked
from prunereg.registry.queries import (
    Failure,
    GroupKey,
    MethodSummary,
    ReportedRow,
    Row,
    SpeedupKind,
    failures,
    leaderboard_rows,
    method_detail,
    methods,
    reported_rows,
)
from prunereg.spec.catalog import models
from prunereg.spec.results import EXECUTION_MODES
from prunereg.spec.sweep import FAILURE_KINDS
from prunereg.spec.taxonomy import GEMM_SHAPES, Gemm
from prunereg.spec.validate import SUPERSEDED, validate_file

from . import display
from .plot import PlotPoint, RealizationPoint, pareto_svg, realization_svg

HERE = Path(__file__).parent
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
    return [(_title(t.key[:3], t.phase, t.batch_size, t.seq_len), t) for t in harness_tables(rows)]


def _plot_point(r: Row, a: Axes, speedup: SpeedupKind) -> PlotPoint:
    """A row on its group's Pareto plot, placed by its ranking axes and drawn with its method's marker."""
    return PlotPoint(
        a.quality_loss, a.speedup, r.family, f"{r.method_name} · {r.operating_point}", display.noisy(r),
        r.method_slug, r.method_name,
    )  # fmt: skip


def _groups(rows: list[Row], speedup: SpeedupKind, failed: Sequence[Failure] = ()) -> list[Group]:
    """The comparable groups with their plots and bands; failures join the group their row would have been in, and a
    group of failures only is listed after the measured ones."""
    grouped: dict[GroupKey, list[Row]] = defaultdict(list)
    for row in rows:
        grouped[row.group].append(row)
    latest = {(f.spec_hash, f.operating_point, f.group): f for f in failed if not f.superseded}  # oldest first
    failed_in: dict[GroupKey, list[Failure]] = defaultdict(list)
    for failure in latest.values():  # one row per point and scenario: its latest failure (the method page has all)
        failed_in[failure.group].append(failure)
    groups = []
    with_quality_first = sorted(grouped.items(), key=lambda kv: all(r.quality_loss is None for r in kv[1]))
    for i, (key, members) in enumerate(with_quality_first):
        points = [_plot_point(r, a, speedup) for r in members if (a := axes(r, speedup)) is not None]
        first = members[0]
        title = _title(key[:4], first.phase, first.batch_size, first.seq_len)  # the key without its scenario
        ordered = sorted(members, key=lambda r: (r.quality_loss is None, r.quality_loss or 0.0, -r.speedup))
        plot = pareto_svg(points, title, "measured") if points else None
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
                for r in members
            ],
            f"Realization: {title}",
            "measured",
        )
        bands = transition_bands(members, speedup=speedup) if points else []
        group = Group(
            f"group-{i + 1}", title, ordered, plot, len(members) - len(points), realization, bands,
            first.phase, first.batch_size, key.device_name, key.execution_mode, failed_in.pop(key, []),
        )  # fmt: skip
        groups.append(group)
    only_failed = sorted(failed_in.items(), key=lambda kv: (kv[0][:4], kv[1][0].phase != "prefill", kv[0].scenario))
    for key, failed_here in only_failed:
        one = failed_here[0]
        title = _title(key[:4], one.phase, one.batch_size, one.seq_len)
        group = Group(
            f"group-{len(groups) + 1}", title, [], None, 0, None, [], one.phase, one.batch_size, key.device_name,
            key.execution_mode, failed_here,
        )  # fmt: skip
        groups.append(group)
    return groups


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


def _reported_groups(rows: Sequence[ReportedRow], speedup: SpeedupKind, prefix: str) -> list[ReportedGroup]:
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
            pareto_svg(points, f"{title} · {key.task}: reported quality", "reported"),
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


def _most(values: Sequence[Any]) -> Any:
    """The most frequent value; a tie goes to the first in sort order, so the choice does not depend on row order."""
    counts: dict[Any, int] = defaultdict(int)
    for value in values:
        counts[value] += 1
    return max(sorted(counts), key=counts.__getitem__)


def headline_choice(rows: Sequence[ReportedRow]) -> HeadlineChoice | None:
    """What the landing view shows: the base model with the most one-shot reported rows, its task with the most
    rows, and the device, dtype and execution mode with the most rows of that task; None without one-shot rows."""
    chosen = [r for r in rows if r.recovery is None]
    if not chosen:
        return None
    base = _most([r.base_model for r in chosen])
    chosen = [r for r in chosen if r.base_model == base]
    task = _most([r.task for r in chosen])
    chosen = [r for r in chosen if r.task == task]
    device, dtype, mode = _most([(r.device_name, r.dtype, r.execution_mode) for r in chosen])
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
    choice: HeadlineChoice, one_shot: list[ReportedGroup], measured: Sequence[Row], speedup: SpeedupKind
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
        choice, _label(c.base_model), timed, _label(timed), _reported_groups(rows, speedup, "headline"),
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
        autoescape=select_autoescape(["html"]),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(times=_times, percent=_percent, ms=_ms, number=_number, param=_param, dimension=_dimension)
    env.filters["calibration"] = _calibration
    env.filters.update(
        family_label=display.family_label, kernel_note=display.kernel_note, gpu_change=display.gpu_change
    )
    env.filters["recovery_note"] = display.recovery_note
    env.tests["noisy"] = display.noisy
    env.globals["quality"] = display.QUALITY_TEXT
    env.globals["version"] = __version__
    return env


def _json_for_web(document: Any) -> str:
    """JSON that stays inert wherever it is pasted: <, > and & become \\u escapes."""
    text = json.dumps(document, indent=1, sort_keys=True, ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026") + "\n"


def _rounded(value: Any) -> Any:
    return float(f"{value:.6g}") if isinstance(value, float) else value


NOT_IN_JSON = ("environment", "kernels", "calibration", "checkpoint")
"""Per-run data repeated on every row; the method pages show it once per run, keyed by environment_key."""


def _json_row(row: Row) -> dict[str, Any]:
    data = {f.name: getattr(row, f.name) for f in fields(row) if f.name not in NOT_IN_JSON}
    data.update(
        family_label=display.family_label(row.family), kernel_note=display.kernel_note(row.kernels), spread=row.spread
    )
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


def build_site(
    engine: Engine,
    out_dir: Path,
    speedup: SpeedupKind = "measured",
    force: bool = False,
    submissions: Path | None = None,
) -> Path:
    """Write the site into out_dir, replacing an earlier build whole, and return the path of its index.html.

    `submissions` (the registered submissions folder) lets the method pages say which version of a
    submission is current; without it they list every version newest first, unmarked.
    Raises prunereg.outputs.OutputRefused for a link, a file, or a folder prunereg did not write
    (unless `force`).
    """
    out_dir = Path(out_dir)
    rows = leaderboard_rows(engine, speedup)
    summaries = methods(engine)
    with replaced_folder(out_dir, SITE_MARKER, force) as fresh:
        _write(engine, fresh, rows, summaries, speedup, submissions)
    return out_dir / "index.html"


def _write(
    engine: Engine,
    out_dir: Path,
    rows: list[Row],
    summaries: list[MethodSummary],
    speedup: SpeedupKind,
    submissions: Path | None = None,
) -> None:
    env = _environment()
    for sub in ("methods", "data"):
        (out_dir / sub).mkdir()
    shutil.copytree(HERE / "static", out_dir / "static")

    reported = reported_rows(engine, speedup, recovery=True, measured=rows)
    one_shot, recovered = split_recovery(reported, speedup)
    one_shot_groups = _reported_groups(one_shot, speedup, "reported")
    choice = headline_choice(one_shot)
    headline = _headline(choice, one_shot_groups, rows, speedup) if choice else None
    page = env.get_template("index.html").render(root="", methods=summaries, headline=headline, speedup=speedup)
    (out_dir / "index.html").write_text(page, encoding="utf-8")
    page = env.get_template("reported.html").render(
        root="", one_shot=one_shot_groups, recovered=_reported_groups(recovered, speedup, "recovery"), speedup=speedup
    )
    (out_dir / "reported.html").write_text(page, encoding="utf-8")
    failed = failures(engine)
    groups = _groups(rows, speedup, failed)
    page = env.get_template("measured.html").render(
        root="", groups=groups, selectors=_selectors(groups), speedup=speedup,
        harness=_harness(rows), modes=EXECUTION_MODES, measured_modes=sorted({r.execution_mode for r in rows}),
    )  # fmt: skip
    (out_dir / "measured.html").write_text(page, encoding="utf-8")
    for summary in summaries:
        detail = method_detail(engine, summary.slug, rows)
        versions = submission_versions(submissions, summary.slug)
        current_first = sorted(detail.submissions, key=lambda s: versions.get(s.spec_hash) != "current")
        detail = replace(detail, submissions=current_first)
        current = next((h for h, v in versions.items() if v == "current"), None)
        page = env.get_template("method.html").render(
            root="../", method=detail, m=summary, versions=versions, current=current,
            failures=[f for f in failed if f.method_slug == summary.slug], failure_kinds=FAILURE_KINDS,
        )  # fmt: skip
        (out_dir / "methods" / f"{summary.slug}.html").write_text(page, encoding="utf-8")

    data = {"speedup": speedup, "rows": [_json_row(r) for r in rows]}
    (out_dir / "data" / "leaderboard.json").write_text(_json_for_web(data), encoding="utf-8")
    claims = sorted([*one_shot, *recovered], key=lambda r: (*r.sort_key(), r.task, r.arxiv, r.paper_table, r.value))
    reported_data = {"speedup": speedup, "quality": "reported", "rows": [_json_reported_row(r) for r in claims]}
    (out_dir / "data" / "reported.json").write_text(_json_for_web(reported_data), encoding="utf-8")
