"""How far a measured speedup can be trusted: a paired bootstrap interval, and when a point is too noisy to rank.

The harness times dense and pruned interleaved, repeat i of one right after repeat i of the other,
so pair i shares whatever the machine was doing then. The bootstrap resamples those pairs (pair
indices with replacement), takes median(dense) / median(pruned) of each resample, and reports the
percentile interval of that ratio. Resampling the two lists apart would pretend their noise is
independent and give a wider interval on a machine whose load drifts.

Pure Python with a fixed seed: the same samples give the same interval on every machine, which
ingestion relies on (it recomputes the interval from a results file's samples and never reads one).
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Sequence

LEVEL = 0.95
"""Coverage of the interval: the 2.5th to the 97.5th percentile of the resampled speedups."""
RESAMPLES = 2000
"""Bootstrap resamples: enough that the 2.5 % tails rest on 50 resamples each."""
SEED = 0
"""Seed of the resampling; fixed, so an interval is a function of the samples alone."""

MAX_HALF_WIDTH = 0.05
"""A measured speedup whose interval's half-width exceeds 5 % of it is too noisy to rank.

At ±5 % two points 10 % apart have disjoint intervals, so a front ranks what was measured rather than
the noise; the differences a front is read for are of that size (ShortGPT's 1.33x against the 1.25x of
the same cut miscounted, in issue 14). Dense timed against itself on a busy two-core CPU gave 1.19x with
an interval of 0.92–1.42 after 60 pairs (benchmarks/busy_cpu_dense.md): left out. The H200 eager results
that kept dense samples have a median half-width of ±5.3 % after 10 pairs, so about half of them are
left out (benchmarks/intervals.md): eager timing on a GPU is launch-bound and jittery.
"""
NOISY_SPREAD = 0.03
"""p80/p20 − 1 of the pruned samples above which a latency without dense samples (files written before
prunereg kept them) is too noisy to rank: its dense median can only be bounded, not resampled."""


def speedup_interval(
    dense: Sequence[float], pruned: Sequence[float], level: float = LEVEL, resamples: int = RESAMPLES, seed: int = SEED
) -> tuple[float, float]:
    """The paired bootstrap percentile interval of median(dense) / median(pruned).

    `dense[i]` and `pruned[i]` are pair i (interleaved repeats); both lists are equally long, at least 1.
    """
    if len(dense) != len(pruned) or not dense:
        raise ValueError(f"need as many dense as pruned samples, at least one: got {len(dense)} and {len(pruned)}")
    if not 0 < level < 1 or resamples < 2:
        raise ValueError(f"level must lie in (0, 1) and resamples be at least 2, not {level} and {resamples}")
    rng = random.Random(seed)
    pairs = range(len(dense))
    ratios = []
    for _ in range(resamples):
        picked = rng.choices(pairs, k=len(dense))
        ratios.append(statistics.median(dense[i] for i in picked) / statistics.median(pruned[i] for i in picked))
    ratios.sort()
    tail = (1 - level) / 2
    return _percentile(ratios, tail), _percentile(ratios, 1 - tail)


def _percentile(ordered: list[float], q: float) -> float:
    """The q-quantile of sorted values, interpolated between neighbours (numpy's default, 'linear')."""
    position = q * (len(ordered) - 1)
    below = int(position)
    above = min(below + 1, len(ordered) - 1)
    return ordered[below] + (ordered[above] - ordered[below]) * (position - below)


def half_width(speedup: float, low: float, high: float) -> float:
    """Half the interval's width relative to the speedup: 0.05 means ±5 %."""
    return (high - low) / 2 / speedup


def noise(speedup: float, low: float | None, high: float | None, spread: float) -> str | None:
    """Why a measured speedup is too noisy to rank, in words; None when it is not.

    With an interval (dense samples kept): its half-width against MAX_HALF_WIDTH. Without one: the
    pruned samples' p80/p20 spread against NOISY_SPREAD.
    """
    if low is not None and high is not None:
        width = half_width(speedup, low, high)
        if width > MAX_HALF_WIDTH:
            return f"speedup interval {low:.2f}–{high:.2f} wider than ±{MAX_HALF_WIDTH:.0%} (±{width:.1%})"
        return None
    if spread > NOISY_SPREAD:
        return f"p80/p20 spread {spread:.1%} above {NOISY_SPREAD:.0%}, and no dense samples to bound the speedup"
    return None
