"""How much of a method's speedup the timing harness decides: one point's realization per execution mode.

The leaderboard's groups keep execution modes apart (`GroupKey`), because an eager and a
graph-replayed latency are not comparable as numbers. Side by side, though, they answer the
question a pruning researcher asks first: is the gap to the roofline the method's, or
transformers' eager forward's? Width pruning in decode is the case in point: launch-bound
eager steps hide its gain, CUDA Graph replay shows it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import median
from typing import NamedTuple

from prunereg.spec.results import EXECUTION_MODES

from .queries import Row


class HarnessKey(NamedTuple):
    """A `GroupKey` without the execution mode: one scenario on one model, device and dtype."""

    model: str
    device_name: str
    dtype: str
    scenario: str


@dataclass(frozen=True)
class ModeFigure:
    """A point's figures in one execution mode: medians over its runs in that mode (usually one)."""

    speedup: float
    realization: float
    runs: int
    fallbacks: tuple[str, ...]
    """Distinct reasons why runs of this mode fell back to eager; their figures are eager ones."""


@dataclass(frozen=True)
class HarnessLine:
    method_slug: str
    method_name: str
    family: str
    operating_point: str
    weights: str
    theoretical_speedup: float
    modes: dict[str, ModeFigure]
    """By execution mode; a mode this point was not measured in is absent."""


@dataclass(frozen=True)
class HarnessTable:
    key: HarnessKey
    phase: str
    batch_size: int
    seq_len: int
    modes: list[str]
    """The modes measured for this key, in `EXECUTION_MODES` order: eager, graph, compiled."""
    lines: list[HarnessLine]


def _figure(rows: list[Row]) -> ModeFigure:
    fallbacks = tuple(sorted({r.fallback for r in rows if r.fallback}))
    return ModeFigure(median(r.speedup for r in rows), median(r.realization for r in rows), len(rows), fallbacks)


def harness_tables(rows: Sequence[Row]) -> list[HarnessTable]:
    """One table per model·device·dtype·scenario measured in at least two execution modes, sorted by key.

    A line is one operating point of one submission (and weights); each mode's figure is taken
    from the rows of that point whose environment ran in that mode (`Row.execution_mode`). Runs
    of one mode in several environments (other library versions or revisions) give the median
    of their figures, with their count; each run stays listed in its group's table.
    """
    points: dict[HarnessKey, dict[tuple, list[Row]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        key = HarnessKey(r.model, r.device_name, r.dtype, r.scenario)
        points[key][(r.method_slug, r.spec_hash, r.operating_point, r.weights)].append(r)
    tables = []
    for key, lines in sorted(points.items()):
        measured = {r.execution_mode for members in lines.values() for r in members}
        if len(measured) < 2:
            continue
        table_lines = []
        for _, members in sorted(lines.items()):
            by_mode: dict[str, list[Row]] = defaultdict(list)
            for r in members:
                by_mode[r.execution_mode].append(r)
            first = members[0]
            table_lines.append(
                HarnessLine(
                    first.method_slug,
                    first.method_name,
                    first.family,
                    first.operating_point,
                    first.weights,
                    median(r.theoretical_speedup for r in members),
                    {mode: _figure(by_mode[mode]) for mode in EXECUTION_MODES if mode in by_mode},
                )  # fmt: skip
            )
        first = next(iter(lines.values()))[0]
        modes = [m for m in EXECUTION_MODES if m in measured]
        tables.append(HarnessTable(key, first.phase, first.batch_size, first.seq_len, modes, table_lines))
    return tables
