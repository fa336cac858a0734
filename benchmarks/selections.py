"""Faithful selections next to their baselines, for every operating point of every shipped submission.

On the embedded model (prunereg-mini, CPU, float32): each point of submissions/*.json is applied with
its shipped selection (the paper's criterion) and with every other selection of its adapter, on the
point's declared calibration data; each pruned copy is scored on the held-out split (cross-entropy) and on
the shipped lm-eval task (austen-cloze, accuracy), and its parameter shapes are compared with the shipped
selection's (equal shapes: equal GEMMs, so the measured speedup is the same). The apply stage is timed:
for a calibrated selection that is its calibration cost.

    .venv/bin/python benchmarks/selections.py            # writes benchmarks/selections.{md,json}
    .venv/bin/python benchmarks/selections.py slicegpt   # re-measures these submissions, keeps the other rows

Single runs on a shared machine: the seconds are indicative, the quality figures are deterministic.
"""

from __future__ import annotations

import copy
import json
import sys
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import Progress

from prunereg.adapters import get_adapter
from prunereg.harness.calibration import calibration_ids
from prunereg.harness.models import load_model
from prunereg.harness.tasks import measure
from prunereg.spec.validate import validate_file

ROOT = Path(__file__).resolve().parents[1]
SELECTIONS = {
    "layer_drop": ("selection", ["block_influence", "sleb", "deepest", "seeded"]),
    "sublayer_drop": ("selection", ["block_influence", "sleb", "deepest", "seeded"]),
    "width": ("selection", ["taylor", "flap", "magnitude", "seeded"]),
    "hidden_slice": ("selection", ["slicegpt", "pca", "magnitude", "seeded"]),
    "low_rank": ("selection", ["svd_llm", "asvd", "svd"]),
    "unstructured": ("selection", ["wanda", "sparsegpt", "magnitude"]),
    "semi_structured_2_4": ("selection", ["sparsegpt", "wanda", "magnitude"]),
    "token_routing": ("policy", ["trained", "seeded"]),
    "sparse_attention": ("policy", ["estimated", "seeded"]),
}
"""Every selection of each adapter; the baselines are the ones no paper is named after (README)."""
BASELINES = {"deepest", "seeded", "magnitude", "svd"}
TASKS = ("heldout-ppl", "austen-cloze")


def shapes(model) -> list[tuple[int, ...]]:
    """Every parameter's shape, whichever layer holds it (sublayer_drop empties different layers' blocks)."""
    return sorted(tuple(p.shape) for p in model.parameters())


def main(only: list[str]) -> None:
    console = Console()
    torch.manual_seed(0)
    loaded = load_model("prunereg-mini", "cpu", torch.float32)
    dense, tokenizer, config = loaded.model, loaded.tokenizer, loaded.model.config
    assert tokenizer is not None, "the embedded model ships its tokenizer"
    measures = {name: measure(dense, tokenizer, name) for name in TASKS}
    rows = []
    submissions = [validate_file(path)[0] for path in sorted((ROOT / "submissions").glob("*.json"))]
    jobs = [
        (sub, point, value)
        for sub in submissions
        if sub is not None and sub.adapter.name in SELECTIONS and (not only or sub.method.slug in only)
        for point in sub.adapter.operating_points
        for value in SELECTIONS[sub.adapter.name][1]
    ]
    with Progress(console=console) as progress:
        bar = progress.add_task("selections", total=len(jobs))
        shipped_shapes: dict[tuple[str, str], list] = {}
        for sub, point, value in jobs:
            field = SELECTIONS[sub.adapter.name][0]
            params = type(point.params).model_validate({**point.params.model_dump(), field: value})
            progress.update(bar, description=f"{sub.method.slug} {point.name} {value}")
            needed = params.calibration_needed()
            ids = (
                calibration_ids(needed, tokenizer, config.vocab_size, config.max_position_embeddings)
                if needed
                else None
            )
            started = time.perf_counter()
            pruned = get_adapter(sub.adapter.name).apply(copy.deepcopy(dense), params, ids)
            seconds = time.perf_counter() - started
            shipped = value == getattr(point.params, field)
            key = (sub.method.slug, point.name)
            if shipped:
                shipped_shapes[key] = shapes(pruned)
            quality = {name: m.of(pruned) for name, m in measures.items()}
            rows.append(
                {
                    "method": sub.method.slug,
                    "adapter": sub.adapter.name,
                    "point": point.name,
                    "selection": value,
                    "shipped": shipped,
                    "baseline": value in BASELINES,
                    "calibration": needed.model_dump() if needed else None,
                    "apply_seconds": round(seconds, 2),
                    "shapes": shapes(pruned),
                    **{f"{name}_value": q.value for name, q in quality.items()},
                    **{f"{name}_dense": q.dense_value for name, q in quality.items()},
                    **{f"{name}_relative_loss": q.relative_loss for name, q in quality.items()},
                }
            )
            del pruned
            progress.advance(bar)
    for row in rows:
        row["same_shapes_as_shipped"] = row.pop("shapes") == shipped_shapes[(row["method"], row["point"])]
    saved = ROOT / "benchmarks" / "selections.json"
    if only and saved.exists():
        kept = [row for row in json.loads(saved.read_text()) if row["method"] not in only]
        order = [sub.method.slug for sub in submissions if sub is not None]
        rows = sorted(kept + rows, key=lambda r: order.index(r["method"]) if r["method"] in order else len(order))
    saved.write_text(json.dumps(rows, indent=1) + "\n")
    (ROOT / "benchmarks" / "selections.md").write_text(markdown(rows))
    console.print(markdown(rows))


def markdown(rows: list[dict]) -> str:
    first = rows[0]
    lines = [
        "Quality loss relative to dense on prunereg-mini (CPU, float32): held-out cross-entropy increase "
        f"(dense {first['heldout-ppl_dense']:.4f} nats) and austen-cloze accuracy drop (dense "
        f"{first['austen-cloze_dense']:.3f}). **bold** = the shipped selection; (b) = a baseline.",
        "",
        "| method | point | selection | held-out CE loss | austen-cloze loss | apply s | same shapes |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        name = f"**{r['selection']}**" if r["shipped"] else r["selection"] + (" (b)" if r["baseline"] else "")
        lines.append(
            f"| {r['method']} | {r['point']} | {name} | {100 * r['heldout-ppl_relative_loss']:+.2f} % "
            f"| {100 * r['austen-cloze_relative_loss']:+.1f} % | {r['apply_seconds']:.1f} "
            f"| {'yes' if r['same_shapes_as_shipped'] else 'no'} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main(sys.argv[1:])
