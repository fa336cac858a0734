"""What a pull request runs: `check` (every gate a submission and its saved results pass, and their division)
and `diff` (how two registries' Pareto fronts differ, as Markdown for the pull request). Neither imports torch."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer
from rich.text import Text

from prunereg.spec.checks import Problem
from prunereg.spec.division import SUBMISSION_CHECKS, Verdict, division
from prunereg.spec.jsonfile import JsonFileError, read_json
from prunereg.spec.results import MAX_RESULT_BYTES, SavedEvaluation
from prunereg.spec.submission import Submission
from prunereg.spec.validate import MAX_BYTES, SUPERSEDED, validate_file

from .common import connect, console, errors, fail, note

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from prunereg.registry.analysis import ScenarioAnalysis
    from prunereg.registry.queries import Row


@dataclass
class _Saved:
    """One results file, checked once however many times it is named or found."""

    path: Path
    saved: SavedEvaluation | None
    problems: list[Problem]

    @property
    def measured_quality(self) -> bool:
        return self.saved is not None and any(p.quality for p in self.saved.result.points)


@dataclass
class _Checker:
    """The files of one `check`: results are found once (by their embedded submission's hash) and checked once."""

    submissions: Path
    results: Path
    given: list[Path]
    checked: dict[Path, _Saved] = field(default_factory=dict)
    _by_hash: dict[str, list[Path]] | None = None

    def saved(self, path: Path, submissions: Path) -> _Saved:
        from prunereg.spec.result_checks import load_saved

        key = path.resolve()
        if key not in self.checked:
            self.checked[key] = _Saved(path, *load_saved(path, submissions))
        return self.checked[key]

    def results_of(self, sub: Submission) -> list[Path]:
        """Saved results embedding exactly this submission: under --results, and those named on the command line."""
        if self._by_hash is None:
            found: dict[str, list[Path]] = defaultdict(list)
            candidates = [*self.given, *sorted(self.results.rglob("*.json"))] if self.results.is_dir() else self.given
            for path in dict.fromkeys(candidates):
                embedded = _embedded_submission(path)
                if embedded is not None:
                    found[embedded].append(path)
            self._by_hash = found
        unique = {p.resolve(): p for p in self._by_hash.get(sub.spec_hash(), [])}
        return list(unique.values())


def _results_document(path: Path) -> dict[str, Any] | None:
    """The file as a saved evaluation's JSON (an object with `submission` and `result`), else None."""
    try:
        document = read_json(path, MAX_RESULT_BYTES)
    except JsonFileError:
        return None
    if isinstance(document, dict) and "result" in document and "submission" in document:
        return document
    return None


def _embedded_submission(path: Path) -> str | None:
    """The spec hash of the submission a results file embeds; None for other files and unreadable submissions."""
    document = _results_document(path)
    if document is None:
        return None
    try:
        return Submission.model_validate(document["submission"]).spec_hash()
    except ValueError:
        return None


def _parsed(path: Path) -> Submission | None:
    try:
        return Submission.model_validate(read_json(path, MAX_BYTES))
    except (JsonFileError, ValueError):
        return None


def _folder_of(path: Path) -> Path:
    """The submissions folder a submission file belongs to (superseded versions live two levels further down)."""
    return path.parents[2] if path.parent.parent.name == SUPERSEDED else path.parent


def _verdict(sub: Submission, saved: list[_Saved]) -> Verdict:
    measured = [s.saved for s in saved if s.saved is not None]
    return division(
        [sub.adapter.name],
        [s.result.model for s in measured],
        any(s.measured_quality for s in saved),
        len(sub.quality_claims),
    )


def _check_submission(checker: _Checker, path: Path) -> tuple[list[tuple[Path, Problem]], str]:
    sub, problems = validate_file(path)
    if sub is None:
        parsed = _parsed(path)  # where only the semantic checks failed, report the claims' provenance at once too
        problems += [p for check in SUBMISSION_CHECKS for p in check(parsed)] if parsed else []
        return [(path, p) for p in problems], ""
    own = [(path, p) for check in SUBMISSION_CHECKS for p in check(sub)]
    saved = [checker.saved(found, _folder_of(path)) for found in checker.results_of(sub)]
    own += [(s.path, p) for s in saved for p in s.problems]
    verdict = _verdict(sub, saved)
    points, claims = len(sub.adapter.operating_points), len(sub.quality_claims)
    summary = (
        f"{path}: ok ({sub.method.name}: {points} operating point{_s(points)}, {claims} claim{_s(claims)}, "
        f"{len(saved)} saved result{_s(len(saved))}); {verdict.division} division: {verdict.reason}"
    )
    return own, summary


def _check_results(checker: _Checker, path: Path) -> tuple[list[tuple[Path, Problem]], str]:
    checked = checker.saved(path, checker.submissions)
    if checked.saved is None:
        return [(path, p) for p in checked.problems], ""
    sub, result = checked.saved.submission, checked.saved.result
    verdict = _verdict(sub, [checked])
    points = len(result.points)
    summary = (
        f"{path}: ok (results of {sub.method.slug} {result.spec_hash[:12]} on {result.model}, {result.weights} "
        f"weights: {points} point{_s(points)}); {verdict.division} division: {verdict.reason}"
    )
    return [], summary


def _s(count: int) -> str:
    return "" if count == 1 else "s"


def _repository_files(submissions: Path, results: Path) -> list[Path]:
    """Without FILES: every submission (current and superseded) and every saved evaluation under --results."""
    files = sorted(submissions.glob("*.json")) + sorted(submissions.glob(f"{SUPERSEDED}/*/*.json"))
    if results.is_dir():
        files += [p for p in sorted(results.rglob("*.json")) if _results_document(p) is not None]
    return files


def check(
    files: Annotated[
        list[Path] | None,
        typer.Argument(help="submission or saved-results JSON files [default: every submission and saved result]"),
    ] = None,
    submissions: Annotated[
        Path, typer.Option(help="the registered submissions, which a saved result's embedded submission must equal")
    ] = Path("submissions"),
    results: Annotated[Path, typer.Option(help="where saved results of the submissions are found")] = Path("results"),
) -> None:
    """Check submissions and saved results as a pull request does, and say which division each is in.

    A submission passes `prunereg validate`'s checks and has its claims' provenance complete (catalog base
    model; a paper's table and row); every saved result that embeds it (under --results, or named here)
    passes `prunereg ingest`'s checks. Division: closed (a built-in adapter other than `checkpoint`, catalog
    models, quality measured by prunereg) or open (a plugin or `checkpoint` adapter, or quality only
    claimed). Each problem is printed as FILE: /json/pointer: message and the command exits 1; a clean run
    prints one line per file.

    Example: prunereg check submissions/shortgpt.json results/h200/shortgpt--llama-3.1-8b--h200-*.json
    """
    paths = files or _repository_files(submissions, results)
    saved = {p for p in paths if _results_document(p) is not None}
    checker = _Checker(submissions, results, [p for p in paths if p in saved])
    printed: set[tuple[Path, Problem]] = set()  # a result found for its submission and named too: its lines once
    for path in paths:
        problems, summary = (_check_results if path in saved else _check_submission)(checker, path)
        for where, problem in problems:
            if (where.resolve(), problem) not in printed:
                errors.print(Text(f"{where}: {problem.pointer or '/'}: {problem.message}"), soft_wrap=True)
            printed.add((where.resolve(), problem))
        if not problems:
            console.print(Text(summary), soft_wrap=True)
    if printed:
        raise typer.Exit(1)


# --- diff ---------------------------------------------------------------------------------------------

QUALITIES: tuple[Literal["measured", "reported"], ...] = ("measured", "reported")


@dataclass(frozen=True)
class _Front:
    """One group's front and bands, as `diff` compares them."""

    quality: str
    title: str
    points: dict[tuple, Row]
    bands: tuple[tuple[str, float, float], ...]
    excluded: dict[tuple, Row]
    """Points left out of the front as too noisy to rank: the pull request's author must hear why a new point
    is missing from the front, not only that it did not enter."""


def _identity(row: Row) -> tuple:
    """What makes a front point the same point in two registries: the run (version, environment) and, for
    reported quality, the claim."""
    base = (row.method_slug, row.operating_point, row.spec_hash, row.model, row.weights, row.environment_key)
    arxiv, table, value = (getattr(row, name, None) for name in ("arxiv", "paper_table", "value"))
    return (*base, arxiv, table, value)


def _fronts(engine: Engine) -> dict[tuple, _Front]:
    """Every group with quality, of both qualities, at every phase and batch size the registry holds."""
    from prunereg.registry.analysis import scenario_analysis
    from prunereg.registry.queries import leaderboard_rows

    scenarios = sorted({(r.phase, r.batch_size) for r in leaderboard_rows(engine)})
    fronts = {}
    for quality in QUALITIES:
        for phase, batch in scenarios:
            for a in scenario_analysis(engine, phase, batch, quality=quality):
                if a.has_quality:
                    key = (quality, *a.key)
                    fronts[key] = _Front(
                        quality, _group_title(a), _by_identity(a.frontier), _bands(a), _by_identity(a.excluded)
                    )
    return fronts


def _group_title(a: ScenarioAnalysis) -> str:
    k = a.key
    task = f" · {k.task}" if k.task else ""
    return f"{a.quality_source} quality · {k.model} · {k.device_name} · {k.dtype} · {k.execution_mode} · {k.scenario}{task}"


def _by_identity(rows: list[Row]) -> dict[tuple, Row]:
    return {_identity(r): r for r in rows}


def _bands(a: ScenarioAnalysis) -> tuple[tuple[str, float, float], ...]:
    return tuple((b.family, b.low, b.high) for b in a.bands)


MARKDOWN_SPECIAL = "\\`*_{}[]#|<>~"
"""What can start emphasis, code, a link or image, an issue reference or a table cell inside a line; the
text never starts a line, so list and heading markers need no escape."""


def _md(text: str) -> str:
    """Submission text made inert in a pull-request comment: Markdown punctuation escaped, and @ kept from
    mentioning anyone (a zero-width space after it): names come from the pull request itself."""
    escaped = "".join("\\" + c if c in MARKDOWN_SPECIAL else c for c in " ".join(text.split()))
    return escaped.replace("@", "@\u200b")


def _point_line(change: str, row: Row) -> str:
    from prunereg.leaderboard.display import family_label
    from prunereg.registry.queries import ReportedRow

    loss = "n/a" if row.quality_loss is None else f"{row.quality_loss * 100:.1f} %"
    source = f" (arXiv {_md(row.arxiv)}, {_md(row.paper_table)})" if isinstance(row, ReportedRow) else ""
    return (
        f"| {change} | {_md(row.method_name)} | {_md(row.operating_point)}{source} | {_md(family_label(row.family))} "
        f"| {row.speedup:.2f}× | {loss} | {row.spec_hash[:8]} · {_md(row.environment_key[:8])} |"
    )


def _band_text(bands: tuple[tuple[str, float, float], ...]) -> str:
    from prunereg.leaderboard.display import family_label

    if not bands:
        return "none"
    parts = []
    for family, low, high in bands:
        span = f"{low * 100:g} %" if low == high else f"{low * 100:g}–{high * 100:g} %"
        parts.append(f"{_md(family_label(family))} {span}")
    return "; ".join(parts)


def diff_markdown(old: dict[tuple, _Front], new: dict[tuple, _Front]) -> str:
    """The Markdown a pull-request comment carries: per changed group, the points that entered or left its
    front, the points newly left out as too noisy to rank, and its transition bands before and after."""
    sections, unchanged = [], 0
    for key in sorted(set(old) | set(new), key=lambda k: tuple(str(v) for v in k)):
        before, after = old.get(key), new.get(key)
        was, now = (before.points if before else {}), (after.points if after else {})
        entered = [r for i, r in now.items() if i not in was]
        left = [r for i, r in was.items() if i not in now]
        bands_before = before.bands if before else ()
        bands_after = after.bands if after else ()
        was_out, now_out = (before.excluded if before else {}), (after.excluded if after else {})
        noisy = [r for i, r in now_out.items() if i not in was_out]
        if not entered and not left and not noisy and bands_before == bands_after:
            unchanged += 1
            continue
        front = after or before
        assert front is not None
        status = " (new group)" if before is None else " (group gone)" if after is None else ""
        lines = [f"### {_md(front.title)}{status}", ""]
        if entered or left:
            lines += [
                "| front | method | point | family | speedup | loss | version · environment |",
                "|---|---|---|---|---|---|---|",
            ]
            lines += [_point_line("entered", r) for r in sorted(entered, key=_order)]
            lines += [_point_line("left", r) for r in sorted(left, key=_order)]
            lines.append("")
        if noisy:
            lines += ["Left out of the front, speedup too noisy to rank (measure again with more repeats):", ""]
            lines += [
                f"- {_md(r.method_name)} · {_md(r.operating_point)}: {r.excluded}" for r in sorted(noisy, key=_order)
            ]
            lines.append("")
        if bands_before != bands_after:
            lines += [
                "Transition bands (fastest family per quality-loss tolerance):",
                "",
                f"- before: {_band_text(bands_before)}",
                f"- after: {_band_text(bands_after)}",
                "",
            ]
        sections.append("\n".join(lines))
    changed = len(sections)
    head = [
        "## Pareto fronts: base branch → this pull request",
        "",
        f"{changed} group{_s(changed)} changed, {unchanged} unchanged. Measured and reported quality are "
        "separate groups (reported: the papers' claims × the speed prunereg measured); speedups are measured.",
        "",
    ]
    if not sections:
        head.append("No operating point entered or left a front, and no transition band moved.\n")
    return "\n".join(head + sections)


def _order(row: Row) -> tuple:
    return (
        row.quality_loss if row.quality_loss is not None else 0.0,
        -row.speedup,
        row.method_slug,
        row.operating_point,
    )


def diff(
    old_registry: Annotated[str, typer.Argument(help="the base registry: SQLite file or SQLAlchemy URL")],
    new_registry: Annotated[str, typer.Argument(help="the registry with the pull request's changes")],
    out: Annotated[Path | None, typer.Option(help="write the Markdown here instead of stdout")] = None,
) -> None:
    """Which operating points entered or left each Pareto front, and which transition bands moved, as Markdown.

    Every group with quality (measured and reported, one-shot claims) at every phase and batch size either
    registry holds is compared; a point is the same point when its method, submission version, run
    environment (and, reported, its claim) are.

    Example: prunereg diff base.db pr.db --out diff.md
    """
    old_fronts, new_fronts = _fronts(connect(old_registry)), _fronts(connect(new_registry))
    text = diff_markdown(old_fronts, new_fronts)
    if out is None:
        typer.echo(text, nl=False)
        return
    try:
        out.write_text(text, encoding="utf-8")
    except OSError as err:
        raise fail(f"cannot write {out}: {err.strerror}") from None
    note(f"written: {out}")
