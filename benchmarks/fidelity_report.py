"""Issues 4 and 12's tables from two rounds of benchmarks/fidelity.py: times, floors, realization, targets.

    python3 benchmarks/fidelity_report.py results/h200-fidelity [--out benchmarks/h200_fidelity.md]

Round 1 is DIR, round 2 is DIR/round-2. "Floor" is the roofline time of the dense model at the
catalog's ceilings of the device the runs name (what `theoretical` uses everywhere); "floor@run" the
same at the ceilings this round measured. Every ratio compares figures of one process; the spread
compares two. The targets table takes each figure from both rounds, in every mode but eager.
"""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import dataclass
from pathlib import Path

from prunereg.spec.catalog import devices, models, suites
from prunereg.spec.costmodel import estimate
from prunereg.spec.results import Environment, LatencyResult, SavedEvaluation

MODEL = "llama-3.1-8b"
MODES = ("graph", "fused", "compiled")
"""The modes a target may be met in; eager is the figure they improve on."""
ALL_MODES = (*MODES, "eager")
POINTS = ("drop-50", "width-50", "2-4")
DESCRIBED = {  # in this order, so that compiled's "the same" is graph
    "graph": "graph = prunereg's static-cache CUDA-Graph harness",
    "compiled": "compiled = the same on a torch.compile'd forward",
    "fused": "fused = prunereg's own forward (q/k/v and gate/up concatenated, its own static KV cache, layers "
    "torch.compile'd), captured like graph mode",
    "eager": "eager = transformers' own forward",
}


@dataclass(frozen=True)
class Target:
    """One row of issue 12's targets: a figure of one point in one scenario, and the bounds it must keep."""

    figure: str
    point: str  # "dense": the dense medians of the pairs
    scenario: str
    at_most_ms: float | None = None
    at_most_floor: float | None = None
    at_least_realization: float | None = None
    at_least_speedup: float | None = None

    def used(self, found: dict[tuple[str, str, str], LatencyResult], mode: str) -> list[LatencyResult]:
        """The latencies the figure comes from in `mode`: the point's, or for the dense time every pair's that
        really ran in `mode` (all pairs where each fell back)."""
        if self.point != "dense":
            lat = found.get((mode, self.point, self.scenario))
            return [lat] if lat else []
        pairs = [lat for (m, _, name), lat in found.items() if m == mode and name == self.scenario]
        return [lat for lat in pairs if lat.execution == mode] or pairs

    def value(self, found: dict[tuple[str, str, str], LatencyResult], mode: str) -> tuple[float, float] | None:
        """(the figure, its ratio to the floor or the figure again) in `mode`, or None where not measured."""
        used = self.used(found, mode)
        if not used:
            return None
        if self.point == "dense":
            ms = statistics.median(lat.dense_median for lat in used)
            return ms, statistics.median(lat.dense_median / lat.theoretical_dense for lat in used)
        figure = used[0].realization if self.at_least_realization is not None else used[0].speedup
        return figure, figure

    def met(self, value: tuple[float, float]) -> bool:
        figure, ratio = value
        return all(
            (
                self.at_most_ms is None or figure <= self.at_most_ms,
                self.at_most_floor is None or ratio <= self.at_most_floor,
                self.at_least_realization is None or figure >= self.at_least_realization,
                self.at_least_speedup is None or figure >= self.at_least_speedup,
            )
        )

    def shown(self, value: tuple[float, float] | None) -> str:
        if value is None:
            return "–"
        if self.point == "dense":
            return f"{value[0]:.2f} ms ({value[1]:.2f}×)"
        return f"{value[0]:.2f}" if self.at_least_realization is not None else f"{value[0]:.2f}×"

    def goal(self) -> str:
        bounds = [
            f"≤ {self.at_most_ms:g} ms" if self.at_most_ms is not None else "",
            f"≤ {self.at_most_floor:g}× floor" if self.at_most_floor is not None else "",
            f"≥ {self.at_least_realization:g}" if self.at_least_realization is not None else "",
            f"≥ {self.at_least_speedup:g}×" if self.at_least_speedup is not None else "",
        ]
        return ", ".join(b for b in bounds if b)


TARGETS = (
    Target("dense decode bs=1 ctx 4096", "dense", "decode-b1-c4096", at_most_ms=4.6, at_most_floor=1.25),
    Target("dense prefill bs=1 4096 tokens", "dense", "prefill-b1-s4096", at_most_ms=95, at_most_floor=1.2),
    Target("50 % width decode bs=1, realization", "width-50", "decode-b1-c4096", at_least_realization=0.9),
    Target("50 % depth decode bs=1, realization", "drop-50", "decode-b1-c4096", at_least_realization=0.95),
    Target("2:4 prefill bs=8/1024, speedup", "2-4", "prefill-b8-s1024", at_least_speedup=1.1),
)
KERNEL_KINDS = ("GEMM", "attention", "copy/cast", "elementwise/norm/other")
"""The kinds benchmarks/fidelity.py's kernel_times sums a profiled step's kernels into (its other keys are top
kernels, replays and other steps' rows)."""
SPREAD_TARGET = 0.02
"""Largest run-to-run change of any median (pruned or dense) of one mode."""


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


def environment(folder: Path) -> Environment:
    """The environment of the folder's first saved evaluation: the device the round ran on."""
    path = next(iter(sorted(folder.glob("*--*.json"))), None)
    if path is None:
        raise SystemExit(f"no saved evaluations in {folder.name}")
    return SavedEvaluation.model_validate_json(path.read_text()).result.environment


def spread(a: LatencyResult | None, b: LatencyResult | None, field: str) -> float | None:
    """The run-to-run change of one median where both rounds ran it in the same mode (not across a fallback)."""
    if a is None or b is None or a.execution != b.execution:
        return None
    return change(getattr(a, field), getattr(b, field))


def percent(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"


def ms(lat: LatencyResult | None, field: str) -> str:
    return "–" if lat is None else f"{getattr(lat, field):.2f}"


def change(a: float, b: float) -> float:
    return abs(a - b) / min(a, b)


def listed(words: list[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    return " and ".join(words) if len(words) < 3 else f"{', '.join(words[:-1])} and {words[-1]}"


def repeats_by_mode(found: dict[tuple[str, str, str], LatencyResult]) -> str:
    """'30 repeats in graph and compiled mode, 15 in eager': the repeats asked for, grouped, modes in table order."""
    asked: dict[int, list[str]] = {}
    for mode in ALL_MODES:
        counts = [
            lat.timing.repeats if lat.timing else len(lat.samples) for (m, _, _), lat in found.items() if m == mode
        ]
        if counts:
            asked.setdefault(max(counts), []).append(mode)
    if not asked:
        return ""
    (n, modes), *rest = asked.items()
    return ", ".join([f"{n} repeats in {listed(modes)} mode", *(f"{k} in {listed(m)}" for k, m in rest)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    first, second = load(args.folder), load(args.folder / "round-2")
    ceilings = json.loads((args.folder / "ceilings.json").read_text())
    env = environment(args.folder)
    catalog = devices()[env.device_profile or "h200"]
    device = env.device_name.removeprefix("NVIDIA ")
    measured = catalog.model_copy(
        update={"matmul_flops": ceilings["matmul_flops"], "memory_bandwidth": ceilings["copy_bytes_per_s"]}
    )
    arch = models()[MODEL]
    stem = "h200_" + args.folder.name.split("-", 1)[1]  # the script; its folder is named after the card that came
    modes = [m for m in ALL_MODES if any(key[0] == m for key in first)]
    lines = [
        f"# Harness fidelity on one {device} (issues 4 and 12)",
        "",
        f"Made by `bash benchmarks/{stem}.sh` on the device machine and `python3 benchmarks/fidelity_report.py "
        f"results/{args.folder.name} --out benchmarks/{args.out.name if args.out else args.folder.name.replace('-', '_') + '.md'}`. Llama-3.1-8B "
        f"shapes, random bf16 weights; {', '.join(text for m, text in DESCRIBED.items() if m in modes)}; {repeats_by_mode(first)} "
        "(benchmarks/fidelity.py). Two rounds in two processes; r1/r2 = round 1 / round 2.",
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
    for scenario in suites()["reference"]:
        for point in POINTS:
            for mode in ALL_MODES:
                a, b = first.get((mode, point, scenario.name)), second.get((mode, point, scenario.name))
                one = a or b
                if one is None:
                    continue
                at_run = estimate(arch, measured, scenario).time_ms
                pruned, dense = spread(a, b, "median"), spread(a, b, "dense_median")
                spreads.setdefault(mode, []).extend(x for x in (pruned, dense) if x is not None)
                flag = "".join(
                    f" (r{i}: {lat.execution}: {lat.fallback})" for i, lat in ((1, a), (2, b)) if lat and lat.fallback
                )
                lines.append(
                    f"| {scenario.name} | {point} | {mode}{flag} | {ms(a, 'median')} | {ms(b, 'median')} | {percent(pruned)} | "
                    f"{ms(a, 'dense_median')} | {ms(b, 'dense_median')} | {percent(dense)} | {one.theoretical_dense:.2f} | "
                    f"{at_run:.2f} | {one.dense_median / one.theoretical_dense:.2f}× | {one.speedup:.2f}× | "
                    f"{one.theoretical_speedup:.2f}× | {ms(a, 'realization')} | {ms(b, 'realization')} |"
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
    lines += targets(first, second, spreads)
    lines += why(args.folder, arch, measured, first)
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


def targets(
    first: dict[tuple[str, str, str], LatencyResult],
    second: dict[tuple[str, str, str], LatencyResult],
    spreads: dict[str, list[float]],
) -> list[str]:
    """Issue 12's targets: each figure in each mode but eager, from both rounds, and whether it is met."""
    lines = [
        "",
        "## Targets (issue 12)",
        "",
        "Each figure in each mode that measured it, from round 1 and round 2 (separate processes). A dense time is "
        "the median over the pairs of that mode of the dense median each pair measured (the dense model timed "
        "interleaved with its pruned one; pairs that fell back to another mode left out where any did not), with its ratio to the floor (the dense roofline time the saved latency "
        "carries); realization is measured speedup over theoretical speedup. Spread = |r1 − r2| / min(r1, r2) of the "
        "figure; the spread row is the largest of any median in that mode (pruned and dense, every pair), as in the "
        "table above, both counting only figures both rounds ran in the same mode. **Met** when every bound of the "
        "target holds in both rounds; a figure measured in one round only is judged on it and says so. A mode that "
        "fell back (the harness records why) is named with what ran.",
        "",
        "| figure | mode | round 1 | round 2 | spread | target | met |",
        "|---|---|--:|--:|--:|---|---|",
    ]
    modes = [m for m in MODES if any(key[0] == m for key in first)]
    for target in TARGETS:
        rows = 0
        for mode in modes:
            a, b = target.value(first, mode), target.value(second, mode)
            if a is None and b is None:
                continue
            rows += 1
            ran = [{lat.execution for lat in target.used(found, mode)} for found in (first, second)]
            every = ran[0] | ran[1]
            shown_mode = mode if every <= {mode} else f"{mode} (ran {', '.join(sorted(every))})"
            spread = f"{change(a[0], b[0]):.1%}" if a and b and ran[0] == ran[1] else "–"
            if a and b:
                met = "yes" if target.met(a) and target.met(b) else "**no**"
            else:
                only = a or b
                assert only is not None
                met = ("yes" if target.met(only) else "**no**") + f" (round {1 if a else 2} only)"
            lines.append(
                f"| {target.figure} | {shown_mode} | {target.shown(a)} | {target.shown(b)} | {spread} | "
                f"{target.goal()} | {met} |"
            )
        if not rows:
            lines.append(f"| {target.figure} | not measured | – | – | – | {target.goal()} | n/a |")
    for mode in modes:
        worst = max(spreads[mode]) if spreads.get(mode) else None
        met = "n/a (one round)" if worst is None else ("yes" if worst <= SPREAD_TARGET else "**no**")
        shown = "–" if worst is None else f"{worst:.1%}"
        lines.append(f"| run-to-run spread of a median | {mode} | – | – | {shown} | ≤ {SPREAD_TARGET:.0%} | {met} |")
    return lines


def width_line(mode: str, name: str, kinds: dict[str, float], theoretical: float) -> str:
    """What 50 % width removes from the dense step (GEMM time) and what it keeps (other kernels, gaps), from the
    profile's two replays and kernel sums."""

    def parts(prefix: str, replay: float) -> tuple[float, float, float]:
        gemm = kinds.get(prefix + "GEMM", 0.0)
        others = sum(kinds.get(prefix + kind, 0.0) for kind in KERNEL_KINDS if kind != "GEMM")
        return gemm, others, replay - gemm - others

    dense_replay, width_replay = kinds["step, graph replay (measured)"], kinds["step, graph replay, width-50"]
    dense = parts("", dense_replay)
    width = parts("width-50, ", width_replay)
    speedup = dense_replay / width_replay
    return (
        f"- {mode}, {name}, LLM-Pruner width-50 profiled the same way: replay {width_replay:.2f} ms against the "
        f"dense {dense_replay:.2f} ms ({speedup:.2f}×, theoretical {theoretical:.2f}×: realization "
        f"{speedup / theoretical:.2f}). GEMMs {width[0]:.2f} ms against {dense[0]:.2f} ms ({dense[0] / width[0]:.2f}×); "
        f"attention, norms, rotary, SiLU, casts and copies {width[1]:.2f} ms against {dense[1]:.2f} ms; gaps between "
        f"kernels {width[2]:.2f} ms against {dense[2]:.2f} ms. Width removes {dense[0] - width[0]:.2f} ms of GEMM "
        f"time and {dense[1] + dense[2] - width[1] - width[2]:.2f} ms of the rest; with GEMMs alone the realization "
        f"would be {dense[0] / width[0] / theoretical:.2f}."
    )


def why(folder: Path, arch, measured, first: dict[tuple[str, str, str], LatencyResult]) -> list[str]:
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
            kernels = sum(kinds.get(kind, 0.0) for kind in KERNEL_KINDS)
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
            for label, what in (
                ("split-KV decoding", "prunereg's split-KV kernel"),
                ("flex decoding", "flex_attention"),
            ):
                other_replay = kinds.get(f"step, graph replay, {label}")
                if other_replay is None:
                    continue
                other_attention = kinds.get(f"{label}, attention")
                kernel_line = "" if other_attention is None else f", its attention kernels {other_attention:.2f} ms"
                lines.append(
                    f"- {mode}, {name}, {what} in place of SDPA: replay {other_replay:.2f} ms{kernel_line} (with "
                    f"SDPA: replay {replay:.2f} ms, attention {attention_ms:.2f} ms); benchmarks/flex_decoding.py "
                    "times the kernels alone."
                )
            lat = first.get((mode, "width-50", name))
            if "step, graph replay, width-50" in kinds and lat is not None:
                lines.append(width_line(mode, name, kinds, lat.theoretical_speedup))
    lines += [
        "",
        "The GEMMs run near the ceilings (cuBLAS/nvjet). In graph mode what is left is transformers' module "
        "structure: separate q/k/v and gate/up projections, fp32 RMSNorm casts, rotary, SiLU and residual adds are "
        "~15 small kernels per layer, each a few µs at batch 1. Fused mode (concatenated q/k/v and gate/up, compiled "
        "elementwise kernels, its own static KV cache) leaves a handful per layer and SDPA's one-query attention, "
        "but a graph replay still waits about a µs between kernels. Width pruning shrinks the GEMMs and none of "
        "these fixed per-layer costs; where the profile has width-50's step, its line above says how much of each "
        "it removes. Layer dropping removes them with the layers (realization ≥ 1).",
    ]
    return lines


if __name__ == "__main__":
    main()
