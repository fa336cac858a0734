"""Frontier and transition-band analysis over leaderboard rows, as pure functions.

The paper's headline is not one number but a shape: which pruning family is the best buy at each
quality budget, e.g. "prefill: static depth 0–4 %, dynamic depth 5–16 %, static width 17–26 %".
`transition_bands` recomputes that shape from a group's rows so the claim can be checked against
any registry instead of being copied from a table.

Two kinds of quality, never in one group: "measured" is what prunereg measured on the same runs as
the latency (the embedded model's held-out cross-entropy); "reported" joins a paper's claim with the
latency prunereg measured for the same operating point on the same base model's shapes (random
weights: the shapes decide the time), the paper's own frontier. Reported groups hold one task under
one protocol (`queries.claim_task`), so methods reported on other tasks are never ranked together.
Quality loss has one definition per metric direction (spec.results.relative_loss): the relative
increase of a perplexity or cross-entropy, the relative drop of an accuracy or of a task average.

A point whose measured speedup is too noisy to rank (`Row.excluded`, spec.uncertainty.noise) takes no
part in a measured frontier or band; each analysis names the points it left out and why.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal, Protocol

from sqlalchemy import Engine

from prunereg.spec.taxonomy import Family

from .pareto import DENSE_AXES, FrontierPoint, SpeedupKind, competing, frontier
from .queries import GroupKey, Row, leaderboard_rows, reported_rows

QualitySource = Literal["measured", "reported"]

DENSE = Family.dense.value
_EPS = 1e-9  # grid tolerances are sums of floats; 0.07 must admit a loss stored as 0.07


@dataclass(frozen=True)
class Band:
    family: str  # Family value, e.g. "static_depth"
    low: float  # quality-loss tolerance where the band starts (fraction, 0.05 = 5 %)
    high: float  # where it ends (fraction), inclusive
    method: str  # method name · operating point giving the best speedup at `low`
    speedup: float  # that speedup


@dataclass(frozen=True)
class _Candidate:
    family: str
    method: str
    speedup: float
    loss: float


def _candidates(rows: Sequence[BandPoint], kind: SpeedupKind) -> list[_Candidate]:
    """Rows with a measured loss that compete (`pareto.competing`), plus the dense baseline pinned at loss 0 and
    speedup 1.

    A dense row's own speedup is dense timed against itself, noise around 1.0; pinning it keeps
    that noise from deciding whether dense "beats" a family at the smallest tolerances.
    """
    dense_name = next((f"{r.method_name} · {r.operating_point}" for r in rows if r.family == DENSE), DENSE)
    out = [_Candidate(DENSE, dense_name, *DENSE_AXES)]
    for r in rows:
        if (a := competing(r, kind)) is not None and r.family != DENSE:
            out.append(_Candidate(r.family, f"{r.method_name} · {r.operating_point}", *a))
    return out


def _rank(c: _Candidate) -> tuple[float, float, str, str]:
    """The fastest point first; ties go to the smaller loss, then the family name."""
    return (-c.speedup, c.loss, c.family, c.method)


def _tolerance(i: int, step: float) -> float:
    return round(i * step, 12)


def _entry(loss: float, step: float) -> int:
    """The first grid index whose tolerance admits `loss` (0 for dense and for a loss below 0)."""
    i = max(0, math.ceil((loss - _EPS) / step) - 1)
    while loss > _tolerance(i, step) + _EPS:
        i += 1
    return i


class BandPoint(FrontierPoint, Protocol):
    """What the bands read of a row: a point of one group with its family and name."""

    @property
    def family(self) -> str: ...

    @property
    def method_name(self) -> str: ...

    @property
    def operating_point(self) -> str: ...


def transition_bands(
    rows: Sequence[BandPoint], step: float = 0.01, speedup: Literal["measured", "theoretical"] = "measured"
) -> list[Band]:
    """The winning family at each tolerance 0, step, 2·step, … up to the largest measured loss.

    The grid ends at the first tolerance at or above the largest loss (0.253 -> 0.26): stopping
    below it would leave the most aggressive point, often the fastest, out of every band.

    Consecutive tolerances won by the same family merge into one band [low, high]. Pass the rows
    of one group (`Row.group`): speedups from different machines or scenarios are not comparable,
    so mixing them raises ValueError. Rows without a quality loss, and excluded rows, are ignored.
    """
    if step <= 0:
        raise ValueError(f"step must be positive, not {step}")
    if speedup not in ("measured", "theoretical"):
        raise ValueError(f"speedup must be 'measured' or 'theoretical', not {speedup!r}")
    rated = [r for r in rows if r.quality_loss is not None]
    if not rated:
        return []
    if len({r.group for r in rated}) > 1:
        raise ValueError("transition_bands needs the rows of one group (model, device, dtype, mode, scenario)")
    candidates = _candidates(rated, speedup)
    steps = math.ceil(max(c.loss for c in candidates) / step - _EPS)  # the last tolerance admits the largest loss
    entering: dict[int, list[_Candidate]] = defaultdict(list)
    for c in candidates:
        entering[_entry(c.loss, step)].append(c)
    # The winner (fastest point within the tolerance) changes only where a point enters, so the grid is walked from
    # entry to entry: SVD-LLM's 80 % point, losing 925,336 % of C4 perplexity, would otherwise cost 925,337 of them.
    indices = sorted(i for i in entering if i <= steps)
    bands: list[Band] = []
    best: _Candidate | None = None
    for i, after in zip(indices, [*indices[1:], steps + 1]):
        best = min([*entering[i], *([best] if best else [])], key=_rank)  # dense enters at 0: always a winner
        low, high = _tolerance(i, step), _tolerance(after - 1, step)
        if bands and bands[-1].family == best.family:
            bands[-1] = replace(bands[-1], high=high)
        else:
            bands.append(Band(best.family, low, high, best.method, best.speedup))
    return bands


@dataclass(frozen=True)
class ScenarioAnalysis:
    """One group's frontier and bands, of one quality source (see the module doc)."""

    key: GroupKey
    speedup_kind: SpeedupKind
    rows: list[Row]  # every latency row of the group, with pareto/dominated_by
    frontier: list[Row]  # sorted by quality loss
    bands: list[Band]
    quality_source: QualitySource = "measured"

    @property
    def has_quality(self) -> bool:
        return any(r.quality_loss is not None for r in self.rows)

    @property
    def excluded(self) -> list[Row]:
        """Rows left out of the frontier and the bands, each with its reason (`Row.excluded`), by method and point."""
        return sorted(
            (r for r in self.rows if r.excluded is not None), key=lambda r: (r.method_slug, r.operating_point)
        )

    def by_rank(self) -> list[Row]:
        """Ranked rows by dominance rank (the front first), then loss; without quality: fastest first, all rows."""
        if not self.has_quality:
            return sorted(self.rows, key=lambda r: (-r.speedup, r.method_slug, r.operating_point))
        ranked = (r for r in self.rows if r.dominated_by is not None)
        return sorted(ranked, key=lambda r: (r.dominated_by, r.quality_loss, -r.speedup))


def scenario_analysis(
    engine: Engine,
    phase: str,
    batch: int,
    device: str | None = None,
    model: str | None = None,
    speedup: SpeedupKind = "measured",
    quality: QualitySource = "measured",
    recovery: bool = False,
) -> list[ScenarioAnalysis]:
    """Frontier and transition bands of each group at one phase and batch size, for one quality source.

    `device` matches a case-insensitive substring of the device name ("h200"), `model` the exact
    model name (for reported quality, the claims' base model); `recovery` admits reported claims that include fine-tuning after pruning. Groups come
    back sorted by their key.
    """
    if quality not in ("measured", "reported"):
        raise ValueError(f"quality must be 'measured' or 'reported', not {quality!r}")
    measured = leaderboard_rows(engine, speedup, phase, batch)  # only this scenario's groups are read
    source = measured if quality == "measured" else reported_rows(engine, speedup, recovery, measured)
    selected = [
        r for r in source
        if r.phase == phase and r.batch_size == batch
        and (device is None or device.lower() in r.device_name.lower())
        and (model is None or r.group.model == model)
    ]  # fmt: skip
    groups: dict[GroupKey, list[Row]] = defaultdict(list)
    for row in selected:
        groups[row.group].append(row)
    return [
        ScenarioAnalysis(
            key, speedup, members, frontier(members, speedup), transition_bands(members, speedup=speedup), quality
        )
        for key, members in sorted(groups.items(), key=lambda item: tuple(v or "" for v in item[0]))
    ]


@dataclass(frozen=True)
class Realization:
    """How close one family comes to its roofline bound in one phase and batch size: measured / theoretical."""

    family: str
    phase: str
    batch_size: int
    median: float
    low: float
    high: float
    points: int


def realization_by_family(rows: Sequence[Row]) -> list[Realization]:
    """Median (and range) of the realization of each family's points, per phase and batch size.

    Pass the rows of one model, device and execution mode: the paper's "static depth comes closest to
    its bound when memory-bound" is a comparison of these medians across families in decode.
    """
    groups: dict[tuple[str, str, int], list[float]] = defaultdict(list)
    for r in rows:
        if r.family != DENSE:
            groups[(r.family, r.phase, r.batch_size)].append(r.realization)
    return [
        Realization(family, phase, batch, statistics.median(values), min(values), max(values), len(values))
        for (family, phase, batch), values in sorted(
            groups.items(), key=lambda item: (item[0][1], item[0][2], item[0][0])
        )
    ]
