"""The speedup-quality Pareto frontier, as pure functions.

A point dominates another when it is at least as fast and loses at most as much quality, and
is strictly better on one of the two. Equal points do not dominate each other, so ties share
the front. Groups on a leaderboard hold tens of points, so the plain quadratic scan is kept
for being obviously right.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol


class Point(Protocol):
    @property
    def speedup(self) -> float: ...  # higher is better

    @property
    def quality_loss(self) -> float: ...  # lower is better


def dominates(a: Point, b: Point) -> bool:
    at_least_as_good = a.speedup >= b.speedup and a.quality_loss <= b.quality_loss
    strictly_better = a.speedup > b.speedup or a.quality_loss < b.quality_loss
    return at_least_as_good and strictly_better


def dominance_rank(points: Sequence[Point]) -> list[int]:
    """For each point, how many points dominate it (0 = on the front)."""
    for p in points:
        if math.isnan(p.speedup) or math.isnan(p.quality_loss):
            raise ValueError(f"a Pareto point needs numbers, got speedup={p.speedup}, loss={p.quality_loss}")
    return [sum(dominates(other, p) for other in points) for p in points]


def pareto_front(points: Sequence[Point]) -> list[bool]:
    """For each point, whether no other point dominates it."""
    return [rank == 0 for rank in dominance_rank(points)]


def frontier(points: Sequence[Point]) -> list[Point]:
    """The front ordered by quality loss, then speedup: the order a step line is drawn in."""
    on_front = [p for p, front in zip(points, pareto_front(points)) if front]
    return sorted(on_front, key=lambda p: (p.quality_loss, p.speedup))
