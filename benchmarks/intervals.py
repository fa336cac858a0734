"""How many committed latencies are tight enough to rank, by the rule the fronts use (spec/uncertainty.py).

    python3 benchmarks/intervals.py [--out benchmarks/intervals.md]

For each results folder and execution mode: latencies, how many kept their dense samples (and so have a
paired-bootstrap interval), the median and largest half-width of those intervals, and how many latencies the
noise rule leaves out of the fronts (interval wider than ±MAX_HALF_WIDTH, or without dense samples a p80/p20
spread above NOISY_SPREAD). Reads the files only; nothing is timed.
"""

from __future__ import annotations

import argparse
import statistics
from collections import defaultdict
from pathlib import Path

from prunereg.spec.jsonfile import read_json
from prunereg.spec.results import MAX_RESULT_BYTES, SavedEvaluation
from prunereg.spec.uncertainty import MAX_HALF_WIDTH, NOISY_SPREAD, half_width, noise, speedup_interval

ROOT = Path(__file__).resolve().parents[1]


def table(results: Path) -> str:
    groups: dict[tuple[str, str], dict[str, list]] = defaultdict(lambda: {"widths": [], "all": [], "left": []})
    for path in sorted(results.glob("*/*--*.json")):
        saved = SavedEvaluation.model_validate(read_json(path, MAX_RESULT_BYTES))
        key = (path.parent.name, saved.result.environment.execution_mode)
        for point in saved.result.points:
            for latency in point.latency:
                low = high = None
                if latency.dense_samples is not None:
                    low, high = speedup_interval(latency.dense_samples, latency.samples)
                    groups[key]["widths"].append(half_width(latency.speedup, low, high))
                groups[key]["all"].append(latency)
                if noise(latency.speedup, low, high, latency.spread):
                    groups[key]["left"].append(latency)
    lines = [
        f"Rule: interval half-width above ±{MAX_HALF_WIDTH:.0%} (95 % paired bootstrap), or without dense samples a "
        f"p80/p20 spread above {NOISY_SPREAD:.0%}: left out of the fronts.",
        "",
        "| results | mode | latencies | with dense samples | median half-width | largest | left out |",
        "|---|---|--:|--:|--:|--:|--:|",
    ]
    for (folder, mode), g in sorted(groups.items()):
        widths = g["widths"]
        median = f"±{statistics.median(widths):.1%}" if widths else "–"
        largest = f"±{max(widths):.1%}" if widths else "–"
        lines.append(
            f"| {folder} | {mode} | {len(g['all'])} | {len(widths)} | {median} | {largest} | {len(g['left'])} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=ROOT / "results")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    text = table(args.results)
    if args.out:
        args.out.write_text(text)
    print(text, end="")


if __name__ == "__main__":
    main()
