"""The speedup-quality Pareto frontier, as pure functions: the one place dominance is decided.

A point dominates another when it is at least as fast and loses at most as much quality, and
is strictly better on one of the two. Equal points do not dominate each other, so ties share
the front. `dominates` says it for two points; a group of a community leaderboard holds thousands,
so `dominance_rank` counts with a sweep (tests check it against the pairwise definition). Queries
rank rows with `ranked`, analysis and the plot draw the front with `frontier`.
"""

from __future__ import annotations

import math
import operator
from collections import Counter, defaultdict
from collections.abc import Hashable, Sequence
from dataclasses import fields, replace
from typing import Literal, NamedTuple, Protocol, TypeVar

from prunereg.spec.taxonomy import Family

SpeedupKind = Literal["measured", "theoretical"]


class Point(Protocol):
    @property
    def speedup(self) -> float: ...  # higher is better

    @property
    def quality_loss(self) -> float | None: ...  # lower is better; None: not rated, never on a front


class FrontierPoint(Point, Protocol):
    """A leaderboard row: a point with a roofline speedup too, comparable only inside its group."""

    @property
    def theoretical_speedup(self) -> float: ...

    @property
    def group(self) -> Hashable: ...


class Axes(NamedTuple):
    speedup: float
    quality_loss: float


DENSE_AXES = Axes(1.0, 0.0)
"""Dense, by definition: every speedup is relative to it and it loses nothing. A pruned point that dense
dominates (no faster and no better) is off the front whether or not its group holds a dense row: a reported
group never does (papers claim pruned points; FLAP's 20 % at 0.60x of dense sat on an H100 front), and a
measured dense row is dense timed against itself, noise around 1."""

P = TypeVar("P", bound=Point)
R = TypeVar("R", bound=FrontierPoint)


def axes(point: Point, speedup: SpeedupKind = "measured") -> Axes | None:
    """The two numbers a point is ranked by; None when it has no quality loss to rank."""
    if point.quality_loss is None:
        return None
    if speedup == "measured":
        return Axes(point.speedup, point.quality_loss)
    if speedup == "theoretical":
        return Axes(point.theoretical_speedup, point.quality_loss)  # type: ignore[attr-defined]
    raise ValueError(f"speedup must be 'measured' or 'theoretical', not {speedup!r}")


def competing(point: Point, speedup: SpeedupKind = "measured") -> Axes | None:
    """The axes of a point that takes part in a ranking; None when it has no quality loss, or when its measured
    speedup is too noisy to rank (its `excluded` reason, as leaderboard rows carry it). A measured speedup whose
    95 % interval reaches down to 1 (`speedup_low`) cannot be told apart from dense: it competes at 1.0 at most,
    so dense dominates it on the front and keeps its bands (on an H100, unstructured 50 % at 1.01x took bands
    from dense). A theoretical speedup has no noise: every point competes at its own."""
    a = axes(point, speedup)
    if speedup == "theoretical" or a is None:
        return a
    if getattr(point, "excluded", None) is not None:
        return None
    low = getattr(point, "speedup_low", None)
    return a._replace(speedup=min(a.speedup, 1.0)) if low is not None and low <= 1.0 else a


def dominates(a: Axes, b: Axes) -> bool:
    at_least_as_good = a.speedup >= b.speedup and a.quality_loss <= b.quality_loss
    strictly_better = a.speedup > b.speedup or a.quality_loss < b.quality_loss
    return at_least_as_good and strictly_better


def dominance_rank(points: Sequence[Axes]) -> list[int]:
    """For each point, how many points dominate it (0 = on the front)."""
    for p in points:
        if math.isnan(p.speedup) or math.isnan(p.quality_loss):
            raise ValueError(f"a Pareto point needs numbers, got speedup={p.speedup}, loss={p.quality_loss}")
    return _dominators(points)


def _dominators(points: Sequence[Axes]) -> list[int]:
    """The same count as `sum(dominates(q, p) for q in points)` for each p, in O(n log n) instead of O(n²):
    sweeping from the fastest speedup down, a Fenwick tree over quality-loss ranks counts the points at least
    as fast and at most as lossy; the point itself and its exact ties, which do not dominate it, are taken off."""
    losses = {loss: i + 1 for i, loss in enumerate(sorted({p.quality_loss for p in points}))}
    tree = [0] * (len(losses) + 1)
    ties = Counter((p.speedup, p.quality_loss) for p in points)
    order = sorted(range(len(points)), key=lambda i: -points[i].speedup)
    counts = [0] * len(points)
    start = 0
    while start < len(order):
        end = start
        while end < len(order) and points[order[end]].speedup == points[order[start]].speedup:
            i = losses[points[order[end]].quality_loss]
            while i < len(tree):
                tree[i] += 1
                i += i & -i
            end += 1
        for k in order[start:end]:
            i, seen = losses[points[k].quality_loss], 0
            while i:
                seen += tree[i]
                i -= i & -i
            counts[k] = seen - ties[(points[k].speedup, points[k].quality_loss)]
        start = end
    return counts


def pareto_front(points: Sequence[Axes]) -> list[bool]:
    """For each point, whether no other point dominates it."""
    return [rank == 0 for rank in dominance_rank(points)]


def frontier(points: Sequence[P], speedup: SpeedupKind = "measured") -> list[P]:
    """The points of one group on its front, by quality loss then speedup: the order a step line is drawn in.

    Points without a quality loss, and excluded ones (`competing`), are left out; ties keep the order they came in.
    """
    rated = [(p, a) for p in points if (a := competing(p, speedup)) is not None]
    ranks = _ranks(rated)
    on_front = [(p, a) for (p, a), rank in zip(rated, ranks) if rank == 0]
    return [p for p, _ in sorted(on_front, key=lambda pa: (pa[1].quality_loss, pa[1].speedup))]


def ranked(rows: Sequence[R], speedup: SpeedupKind = "measured") -> list[R]:
    """The rows with `pareto` and `dominated_by` set within their groups, among the rows that compete (rows without
    quality, and excluded rows: False and None)."""
    groups: dict[Hashable, list[tuple[int, Axes]]] = defaultdict(list)
    for i, row in enumerate(rows):
        if (a := competing(row, speedup)) is not None:
            groups[row.group].append((i, a))
    marked = list(rows)
    for members in groups.values():
        for (i, _), rank in zip(members, _ranks([(rows[i], a) for i, a in members])):
            marked[i] = _with_rank(rows[i], rank)
    return marked


def _ranks(rated: Sequence[tuple[Point, Axes]]) -> list[int]:
    """`dominance_rank` of one group, plus one for each pruned point that dense itself dominates (DENSE_AXES)."""
    ranks = dominance_rank([a for _, a in rated])
    return [
        rank + (getattr(p, "family", None) != Family.dense.value and dominates(DENSE_AXES, a))
        for (p, a), rank in zip(rated, ranks)
    ]


_INIT: dict[type, tuple[operator.attrgetter, int, int]] = {}


def _with_rank(row: R, rank: int) -> R:
    """`replace(row, pareto=rank == 0, dominated_by=rank)` for a dataclass row at half the cost: its fields read
    in one call and passed in order (a million rows are ranked on a large registry)."""
    kind = type(row)
    if kind not in _INIT:
        known = fields(kind)  # type: ignore[arg-type]
        if any(f.kw_only for f in known):
            return replace(row, pareto=rank == 0, dominated_by=rank)  # type: ignore[type-var]
        names = [f.name for f in known if f.init]
        _INIT[kind] = (operator.attrgetter(*names), names.index("pareto"), names.index("dominated_by"))
    read, pareto, dominated_by = _INIT[kind]
    values = list(read(row))
    values[pareto], values[dominated_by] = rank == 0, rank
    return kind(*values)
