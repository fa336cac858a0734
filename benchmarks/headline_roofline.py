"""The paper's headline from the registry's claims, priced by the roofline alone (no GPU measured here).

For every base model and task where one-shot claims of two or more families meet, each claimed operating point
gets its reported quality loss and the theoretical speedup its declaration allows on the H200 profile in the
`headline` suite (spec/costmodel.py); transition bands then say which family is fastest at each loss budget.
This is "reported quality x THEORETICAL speed": the measured version needs the H200 runs of
benchmarks/h200_headline.sh (README, "Published results"); where a family realizes less of its bound
(2:4 on cuSPARSELt, low rank, sparse attention), the measured bands move.

    .venv/bin/python benchmarks/headline_roofline.py    # writes benchmarks/headline_roofline.md
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from prunereg.registry.analysis import transition_bands
from prunereg.registry.queries import claim_task
from prunereg.spec.catalog import devices, models, suites
from prunereg.spec.costmodel import theoretical_speedup
from prunereg.spec.effects import resolve
from prunereg.spec.results import relative_loss
from prunereg.spec.validate import validate_file

ROOT = Path(__file__).resolve().parents[1]
PAPER = "prefill: static depth 0–4 %, dynamic depth 5–16 %, static width 17–26 %"


@dataclass(frozen=True)
class Point:
    """What transition_bands reads of a row: one claim priced by the roofline."""

    family: str
    method_name: str
    operating_point: str
    quality_loss: float
    speedup: float
    theoretical_speedup: float
    group: str = "one group"


def main() -> None:
    catalog, h200, headline = models(), devices()["h200"], suites()["headline"]
    submissions = [s for s in (validate_file(p)[0] for p in sorted((ROOT / "submissions").glob("*.json"))) if s]
    claims = [(s, c) for s in submissions for c in s.quality_claims if c.recovery is None and c.base_model in catalog]
    groups: dict[tuple[str, str], list] = defaultdict(list)
    for submission, claim in claims:
        groups[(claim.base_model, claim_task(claim))].append((submission, claim))
    compared = {k: v for k, v in groups.items() if len({s.family for s, _ in v}) >= 2}
    lines = [
        "Reported quality × THEORETICAL speedup (roofline, H200 profile, bf16, suite `headline`): every base model and "
        f"task on which one-shot claims of two or more families meet ({len(compared)} of {len(groups)} groups; "
        f"{len(claims)} one-shot claims on catalog models). Not measured: benchmarks/h200_headline.sh times these "
        "points on the H200.",
        "",
        f"The paper: {PAPER}.",
        "",
    ]
    for (base, task), members in sorted(compared.items(), key=lambda kv: (-len({s.family for s, _ in kv[1]}), kv[0])):
        families = sorted({s.family.value for s, _ in members})
        lines += [f"### {catalog[base].label}: {task}", "", f"Families: {', '.join(families)}.", ""]
        priced = []
        for submission, claim in members:
            point = submission.point(claim.operating_point)
            effects = resolve(submission.effects, point.params_for(base), catalog[base])
            speedups = [theoretical_speedup(catalog[base], h200, scenario, effects) for scenario in headline]
            loss = relative_loss(claim.value, claim.dense_value, claim.higher_is_better)
            priced.append((submission, claim, loss, speedups))
        lines += ["| scenario | transition bands (loss range: family, best point, speedup) |", "|---|---|"]
        for i, scenario in enumerate(headline):
            points = [
                Point(s.family.value, s.method.name, c.operating_point, loss, speedups[i], speedups[i])
                for s, c, loss, speedups in priced
            ]
            bands = "; ".join(
                f"{b.low:.0%}–{b.high:.0%}: {b.family}, {b.method} {b.speedup:.2f}×"
                for b in transition_bands(points, speedup="theoretical")
            )
            lines.append(f"| {scenario.name} | {bands} |")
        lines += [
            "",
            "| method · point | family | reported loss | " + " | ".join(sc.name for sc in headline) + " | source |",
        ]
        lines.append("|---|---|--:|" + "--:|" * len(headline) + "---|")
        for s, c, loss, speedups in sorted(priced, key=lambda p: (p[2], -p[3][0])):
            source = f"arXiv:{c.provenance.arxiv} {c.provenance.table}"
            cells = " | ".join(f"{x:.2f}×" for x in speedups)
            lines.append(
                f"| {s.method.name} · {c.operating_point} | {s.family.value} | {loss:+.1%} | {cells} | {source} |"
            )
        lines.append("")
    (ROOT / "benchmarks" / "headline_roofline.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
