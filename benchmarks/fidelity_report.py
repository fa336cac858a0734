"""Issue 4's table from two rounds of benchmarks/fidelity.py: times, floors, realization, targets.

    python3 benchmarks/fidelity_report.py results/h200-fidelity [--out benchmarks/h200_fidelity.md]

Round 1 is DIR, round 2 is DIR/round-2. "Floor" is the roofline time of the dense model at the
catalog's H200 ceilings (what `theoretical` uses everywhere); "floor@run" the same at the ceilings
this round measured. Every ratio compares figures of one process; the spread compares two.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from prunereg.spec.catalog import devices, models, suites
from prunereg.spec.costmodel import estimate
from prunereg.spec.results import LatencyResult, SavedEvaluation

MODEL = "llama-3.1-8b"
MODES = ("graph", "compiled")
"""The modes a target may be met in; eager is the figure they improve on."""
TARGETS = (  # (what, goal, point, scenario); a realization is a floor to reach, the rest ceilings to stay under
    ("floor", 1.25, "dense", "decode-b1-c4096"),
    ("floor", 1.2, "dense", "prefill-b1-s4096"),
    ("realization", 0.95, "drop-50", "decode-b1-c4096"),
    ("realization", 0.9, "width-50", "decode-b1-c4096"),
    ("spread", 0.02, None, None),
)


def load(folder: Path) -> dict[tuple[str, str, str], LatencyResult]:
    """(mode, operating point, scenario) -> latency, from every saved evaluation in the folder."""
    found: dict[tuple[str, str, str], LatencyResult] = {}
    for path in sorted(folder.glob("*--*.json")):  # saved evaluations: slug--model--device
        saved = SavedEvaluation.model_validate_json(path.read_text())
        mode = saved.result.environment.execution_mode
        for point in saved.result.points:
            for lat in point.latency:
                found[mode, point.operating_point, lat.scenario.name] = lat
    return found


def change(a: float, b: float) -> float:
    return abs(a - b) / min(a, b)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    first, second = load(args.folder), load(args.folder / "round-2")
    ceilings = json.loads((args.folder / "ceilings.json").read_text())
    catalog = devices()["h200"]
    measured = catalog.model_copy(
        update={"matmul_flops": ceilings["matmul_flops"], "memory_bandwidth": ceilings["copy_bytes_per_s"]}
    )
    arch = models()[MODEL]
    lines = [
        "# Harness fidelity on one H200 (issue 4)",
        "",
        "Made by `bash benchmarks/h200_fidelity.sh` on the device machine and `python3 benchmarks/fidelity_report.py "
        "results/h200-fidelity --out benchmarks/h200_fidelity.md`. Llama-3.1-8B shapes, random bf16 weights; "
        "graph = prunereg's static-cache CUDA-Graph harness, compiled = the same on a torch.compile'd forward, "
        "eager = transformers' own forward; 30 repeats in graph and compiled mode, 15 in eager (benchmarks/fidelity.py). Two rounds in two "
        "processes; r1/r2 = round 1 / round 2.",
        "",
        f"Ceilings measured in round 1: copy {ceilings['copy_bytes_per_s'] / 1e12:.2f} TB/s (catalog "
        f"{catalog.memory_bandwidth / 1e12:.2f}), bf16 matmul 8192³ {ceilings['matmul_flops'] / 1e12:.0f} TFLOP/s "
        f"(catalog {catalog.matmul_flops / 1e12:.0f}).",
        "",
        "| scenario | point | mode | ms r1 | ms r2 | Δ | dense ms r1 | dense ms r2 | Δ dense | floor | floor@run | "
        "dense/floor | speedup | theoretical | realization r1 | r2 |",
        "|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    spreads: dict[str, list[float]] = {}
    dense_ratio: dict[tuple[str, str], list[float]] = {}
    for scenario in suites()["reference"]:
        for point in ("drop-50", "width-50"):
            for mode in ("graph", "compiled", "eager"):
                a, b = first.get((mode, point, scenario.name)), second.get((mode, point, scenario.name))
                if a is None:
                    continue
                at_run = estimate(arch, measured, scenario).time_ms
                dense_ratio.setdefault((mode, scenario.name), []).append(a.dense_median / a.theoretical_dense)
                if b:
                    spreads.setdefault(mode, []).extend(
                        [change(a.median, b.median), change(a.dense_median, b.dense_median)]
                    )
                    again = (
                        f"{b.median:.2f} | {change(a.median, b.median):.1%} | {a.dense_median:.2f} | "
                        f"{b.dense_median:.2f} | {change(a.dense_median, b.dense_median):.1%}"
                    )
                else:
                    again = f"– | – | {a.dense_median:.2f} | – | –"
                flag = f" ({a.execution}: {a.fallback})" if a.fallback else ""
                lines.append(
                    f"| {scenario.name} | {point} | {mode}{flag} | {a.median:.2f} | {again} | {a.theoretical_dense:.2f} | "
                    f"{at_run:.2f} | {a.dense_median / a.theoretical_dense:.2f}× | {a.speedup:.2f}× | "
                    f"{a.theoretical_speedup:.2f}× | {a.realization:.2f} | {f'{b.realization:.2f}' if b else '–'} |"
                )
    states = [g for lat in [*first.values(), *second.values()] for g in (lat.gpu_before, lat.gpu_after) if g]
    if states:
        reasons = sorted({r for g in states for r in g.clock_event_reasons}) or ["none"]
        lines += [
            "",
            f"NVML around each of the {len(states) // 2} timed scenarios: SM clock "
            f"{min(g.sm_clock_mhz for g in states)}–{max(g.sm_clock_mhz for g in states)} MHz, memory clock "
            f"{min(g.memory_clock_mhz for g in states)}–{max(g.memory_clock_mhz for g in states)} MHz, "
            f"{min(g.temperature_c for g in states)}–{max(g.temperature_c for g in states)} °C, "
            f"clock-event reasons: {', '.join(reasons)}.",
        ]
    lines += [
        "",
        "## Targets (round 1; spread = largest r1/r2 change of any median in that mode)",
        "",
        "| target | goal | graph | compiled | met |",
        "|---|--:|--:|--:|---|",
    ]
    for what, goal, target_point, target_scenario in TARGETS:
        if what == "floor":
            name = f"dense {target_scenario} / floor"
            values = [median_of(dense_ratio.get((m, str(target_scenario)))) for m in MODES]
        elif what == "realization":
            name = f"{target_point} {target_scenario} realization"
            key = (str(target_point), str(target_scenario))
            values = [getattr(first.get((m, *key)), "realization", None) for m in MODES]
        else:
            name, values = "run-to-run spread", [max(spreads[m]) if spreads.get(m) else None for m in MODES]
        upper = what != "realization"
        known = [v for v in values if v is not None]
        best = (min if upper else max)(known) if known else None
        met = "n/a" if best is None else ("yes" if (best <= goal if upper else best >= goal) else "**no**")
        shown = ["–" if v is None else (f"{v:.1%}" if what == "spread" else f"{v:.2f}") for v in values]
        lines.append(f"| {name} | {'≤' if upper else '≥'} {goal:g} | {shown[0]} | {shown[1]} | {met} |")
    lines += why(args.folder, arch, measured)
    for mode in MODES:
        profile = args.folder / f"profile-{mode}.json"
        if profile.exists():
            lines += [
                "",
                f"## Where the dense model's time goes, {mode} mode (kernel time per uncaptured step, "
                "torch.profiler; then replayed steps)",
                "",
                "| scenario | kind | ms |",
                "|---|---|--:|",
            ]
            for scenario, kinds in json.loads(profile.read_text()).items():
                lines += [f"| {scenario} | {kind} | {ms:.2f} |" for kind, ms in kinds.items()]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


def why(folder: Path, arch, measured) -> list[str]:
    """The dense model's gap to its floor, split by the profile into the parts a harness can and cannot remove."""
    lines = ["", "## Why the dense model misses its floor (from the profiles below)", ""]
    for mode in MODES:
        path = folder / f"profile-{mode}.json"
        if not path.exists():
            continue
        for name, kinds in json.loads(path.read_text()).items():
            scenario = next(s for s in suites()["reference"] if s.name == name)
            cost = estimate(arch, measured, scenario)
            attention = [r for r in cost.rows if r.gemm.value.startswith("attn_")]
            projections = [r for r in cost.rows if not r.gemm.value.startswith("attn_")]
            kernels = sum(ms for kind, ms in kinds.items() if not kind.startswith(("step", "top")))
            replay = kinds["step, graph replay (measured)"]
            other = kinds.get("copy/cast", 0) + kinds.get("elementwise/norm/other", 0)
            gemm_ms, attention_ms = kinds.get("GEMM", 0), kinds.get("attention", 0)
            if scenario.phase.value == "decode":
                rate = f"{sum(r.weight_bytes for r in projections) / gemm_ms / 1e9:.2f} TB/s of weights"
            else:
                rate = f"{sum(r.flops for r in projections) / gemm_ms / 1e9:.0f} TFLOP/s"
            lines.append(
                f"- {mode}, {name}: replay {replay:.2f} ms against a floor of {cost.time_ms:.2f} ms at this run's "
                f"ceilings. GEMMs {gemm_ms:.2f} ms ({rate}; floor {sum(r.time_s for r in projections) * 1e3:.2f} ms); "
                f"attention {attention_ms:.2f} ms (floor {sum(r.time_s for r in attention) * 1e3:.2f} ms); "
                f"norms, rotary, SiLU, casts and copies {other:.2f} ms (no floor: the roofline counts GEMMs only); "
                f"gaps between kernels {replay - kernels:.2f} ms."
            )
    lines += [
        "",
        "The GEMMs run near the ceilings (cuBLAS/nvjet). What is left is transformers' module structure: separate "
        "q/k/v and gate/up projections, fp32 RMSNorm casts, rotary, SiLU and residual adds are ~15 small kernels per "
        "layer, each a few µs at batch 1, plus the attention kernel's own efficiency at one query token. A CUDA "
        "Graph removes the launches, not the kernels; torch.compile fuses the elementwise ones. Width pruning halves "
        "the GEMMs but none of these fixed per-layer costs, which is why its decode realization stays under 0.9, "
        "while layer dropping halves them too (realization ≥ 1). Closing the rest needs fused QKV/gate-up "
        "projections and a split-KV decode attention kernel, i.e. a model rewrite rather than a harness change.",
    ]
    return lines


def median_of(values: list[float] | None) -> float | None:
    return statistics.median(values) if values else None


if __name__ == "__main__":
    main()
