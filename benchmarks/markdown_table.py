"""Print a registry's leaderboard rows as a Markdown table (for the README and benchmark outputs).

python benchmarks/markdown_table.py REGISTRY [--model NAME]
python benchmarks/markdown_table.py REGISTRY [--model NAME] --by-mode   (execution modes side by side)
"""

from __future__ import annotations

import argparse
from collections import defaultdict

from prunereg.registry.db import connect
from prunereg.registry.queries import Row, leaderboard_rows


def rows_table(rows: list[Row]) -> list[str]:
    lines = [
        "| model | device | scenario | method · point | ms | dense ms | speedup | theoretical | realization | quality loss |",
        "|---|---|---|---|--:|--:|--:|--:|--:|--:|",
    ]
    for r in rows:
        loss = "n/a" if r.quality_loss is None else f"{r.quality_loss:+.1%}"
        lines.append(
            f"| {r.model} | {r.device_name} | {r.scenario} | {r.method_name} · {r.operating_point} | {r.median_ms:.2f} | "
            f"{r.dense_median_ms:.2f} | {r.speedup:.2f}× | {r.theoretical_speedup:.2f}× | {r.realization:.2f} | {loss} |"
        )
    return lines


def by_mode_table(rows: list[Row]) -> list[str]:
    """Speedup / theoretical per point, one column per (scenario, execution mode): how much of a method's roofline
    each way of running the model realizes. A mode that fell back for a point is named in its cell."""

    def column(r: Row) -> tuple[bool, str, str]:  # prefill first, then decode
        return r.phase != "prefill", r.scenario, r.execution_mode

    columns = sorted({column(r) for r in rows})
    cells: dict[tuple[str, str], dict[tuple, str]] = defaultdict(dict)
    for r in rows:
        ran = "" if r.execution == r.execution_mode else f" ({r.execution})"
        cells[(r.method_name, r.operating_point)][column(r)] = f"{r.speedup:.2f} / {r.theoretical_speedup:.2f}{ran}"
    lines = [
        "| method · point | " + " | ".join(f"{scenario} {mode}" for _, scenario, mode in columns) + " |",
        "|---|" + "--:|" * len(columns),
    ]
    for (method, point), row in sorted(cells.items()):
        lines.append(f"| {method} · {point} | " + " | ".join(row.get(c, "–") for c in columns) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("db")
    parser.add_argument("--model")
    parser.add_argument("--by-mode", action="store_true", help="speedup / theoretical, execution modes side by side")
    args = parser.parse_args()
    rows = [r for r in leaderboard_rows(connect(args.db)) if not args.model or r.model == args.model]
    print("\n".join(by_mode_table(rows) if args.by_mode else rows_table(rows)))


if __name__ == "__main__":
    main()
