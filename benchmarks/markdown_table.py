"""Print a registry's leaderboard rows as a Markdown table (for the README and benchmark outputs).

python benchmarks/markdown_table.py REGISTRY [--model NAME]
"""

from __future__ import annotations

import argparse

from prunereg.registry.db import connect
from prunereg.registry.queries import leaderboard_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("db")
    parser.add_argument("--model")
    args = parser.parse_args()
    print(
        "| model | device | scenario | method · point | ms | dense ms | speedup | theoretical | realization | quality loss |"
    )
    print("|---|---|---|---|--:|--:|--:|--:|--:|--:|")
    for r in leaderboard_rows(connect(args.db)):
        if args.model and r.model != args.model:
            continue
        loss = "n/a" if r.quality_loss is None else f"{r.quality_loss:+.1%}"
        print(
            f"| {r.model} | {r.device_name} | {r.scenario} | {r.method_name} · {r.operating_point} | {r.median_ms:.2f} | "
            f"{r.dense_median_ms:.2f} | {r.speedup:.2f}× | {r.theoretical_speedup:.2f}× | {r.realization:.2f} | {loss} |"
        )


if __name__ == "__main__":
    main()
