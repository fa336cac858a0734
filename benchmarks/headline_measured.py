"""The paper's headline from the registry, measured: reported quality × speed timed on the H200 (issue 11).

Ingests the saved evaluations of benchmarks/h200_headline.sh (results/h200-headline/) into a fresh SQLite registry
and writes, for every base model and task on which one-shot claims of two or more families meet, per scenario of the
`headline` suite: the transition bands with the measured speedup beside the same rows' bands with the theoretical
one, and the front. Then the realization (measured / theoretical) per family, phase and batch size on each timed
model: the paper's "static depth stays closest to its bound when memory-bound" is a comparison of those medians.
Rows the noise rule leaves out (spec/uncertainty.py) are listed, not ranked. Nothing is timed here.

    .venv/bin/python benchmarks/headline_measured.py    # writes benchmarks/headline_measured.md
"""

from __future__ import annotations

import argparse
import tempfile
from collections import defaultdict
from pathlib import Path

from prunereg.registry.analysis import Band, realization_by_family, scenario_analysis
from prunereg.registry.db import connect
from prunereg.registry.ingest import ingest_all
from prunereg.registry.queries import leaderboard_rows
from prunereg.spec.catalog import models, suites
from prunereg.spec.result_checks import load_saved

ROOT = Path(__file__).resolve().parents[1]
PAPER = "prefill: static depth 0–4 %, dynamic depth 5–16 %, static width 17–26 %"


def bands_text(bands: list[Band]) -> str:
    return "; ".join(f"{b.low:.0%}–{b.high:.0%} {b.family} ({b.method} {b.speedup:.2f}×)" for b in bands) or "—"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, nargs="?", default=ROOT / "results" / "h200-headline")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "headline_measured.md")
    args = parser.parse_args()
    loaded = []
    for path in sorted(args.results.glob("*--*.json")):
        saved, problems = load_saved(path, ROOT / "submissions")
        if saved is None:
            raise SystemExit(f"{path.name}: {problems[0]}")
        loaded.append((saved.submission, saved.result))
    catalog = models()
    with tempfile.TemporaryDirectory() as tmp:
        engine = connect(f"sqlite:///{tmp}/headline.db")
        ingest_all(engine, loaded, update_method=False)
        devices = ", ".join(sorted({r.environment.device_name for _, r in loaded}))
        modes = ", ".join(sorted({r.environment.execution_mode for _, r in loaded}))
        lines = [
            f"Reported quality × MEASURED speed: {len(loaded)} saved evaluations of {args.results.name}/ ({devices} in "
            f"{modes} mode, suite `headline`, random bf16 weights of each base model's shapes), joined with the one-shot "
            "claims of the registry. Per base model and task where two or more families meet, per scenario: the "
            "transition bands by measured speedup, then by the same rows' theoretical speedup (the roofline), and "
            "the measured front. A band reads 'loss range, family (best point, speedup)'.",
            "",
            f"The paper: {PAPER}.",
            "",
        ]
        for scenario in suites()["headline"]:
            measured = scenario_analysis(engine, scenario.phase.value, scenario.batch_size, quality="reported")
            roofline = {
                a.key: a
                for a in scenario_analysis(
                    engine, scenario.phase.value, scenario.batch_size, speedup="theoretical", quality="reported"
                )
            }
            mixed = [
                a for a in measured
                if a.key.scenario == scenario.name and len({r.family for r in a.rows if r.quality_loss is not None}) >= 2
            ]  # fmt: skip
            lines += [
                f"## {scenario.name}",
                "",
                "| base model · task | measured bands | roofline bands | front (loss, speedup) | left out |",
            ]
            lines.append("|---|---|---|---|---|")
            for a in sorted(mixed, key=lambda a: (-len({r.family for r in a.rows}), a.key.model, a.key.task or "")):
                front = (
                    ", ".join(
                        f"{r.method_name} {r.operating_point} ({r.quality_loss:.1%}, {r.speedup:.2f}×)"
                        for r in a.frontier
                    )
                    or "dense alone (no point measurably faster)"
                )
                left = ", ".join(f"{r.method_name} {r.operating_point}" for r in a.excluded) or "—"
                lines.append(
                    f"| {catalog[a.key.model].label} · {a.key.task} | {bands_text(a.bands)} | "
                    f"{bands_text(roofline[a.key].bands)} | {front} | {left} |"
                )
            lines.append("")
        rows = [
            r for s in suites()["headline"] for r in leaderboard_rows(engine, "measured", s.phase.value, s.batch_size)
            if r.scenario == s.name
        ]  # fmt: skip
        by_model: dict[str, list] = defaultdict(list)
        for r in rows:
            if r.excluded is None:
                by_model[r.model].append(r)
        lines += [
            "## Realization per family (measured / theoretical speedup; median, range, points; noisy rows left out)",
            "",
        ]
        for model, members in sorted(by_model.items()):
            lines += [f"### {catalog[model].label}", "", "| phase · batch | family | median | range | points |"]
            lines.append("|---|---|--:|---|--:|")
            for f in realization_by_family(members):
                lines.append(
                    f"| {f.phase} · {f.batch_size} | {f.family} | {f.median:.2f} | {f.low:.2f}–{f.high:.2f} | {f.points} |"
                )
            lines.append("")
        engine.dispose()
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
