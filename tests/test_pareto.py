"""Pareto front on hand-made points whose front is known."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import NamedTuple

import pytest

from prunereg.registry.pareto import dominance_rank, dominates, frontier, pareto_front


class P(NamedTuple):
    speedup: float
    quality_loss: float


def test_dominated_point_is_off_the_front():
    points = [P(2.0, 0.10), P(1.5, 0.20), P(1.0, 0.0)]
    assert pareto_front(points) == [True, False, True]
    assert dominance_rank(points) == [0, 1, 0]


def test_equal_points_are_both_on_the_front():
    points = [P(1.5, 0.05), P(1.5, 0.05), P(1.2, 0.08)]
    assert pareto_front(points) == [True, True, False]
    assert dominance_rank(points) == [0, 0, 2]


def test_equal_in_one_axis_better_in_the_other_dominates():
    same_speed = [P(1.8, 0.10), P(1.8, 0.12)]
    same_loss = [P(1.8, 0.10), P(2.0, 0.10)]
    assert pareto_front(same_speed) == [True, False]
    assert pareto_front(same_loss) == [False, True]


def test_trade_off_curve_is_all_front():
    points = [P(1.0 + i / 10, i / 100) for i in range(6)]
    assert pareto_front(points) == [True] * 6


def test_negative_loss_counts_as_better():
    points = [P(1.0, -0.01), P(1.0, 0.0)]
    assert pareto_front(points) == [True, False]


def test_rank_counts_every_dominating_point():
    points = [P(3.0, 0.0), P(2.0, 0.1), P(1.0, 0.2)]
    assert dominance_rank(points) == [0, 1, 2]


def test_dominates_is_strict():
    assert dominates(P(2, 0.1), P(1, 0.1))
    assert not dominates(P(1, 0.1), P(1, 0.1))
    assert not dominates(P(2, 0.2), P(1, 0.1))


def test_frontier_order_for_the_step_line():
    points = [P(2.5, 0.20), P(1.0, 0.0), P(1.1, 0.5), P(1.6, 0.05)]
    assert frontier(points) == [P(1.0, 0.0), P(1.6, 0.05), P(2.5, 0.20)]


def test_empty_and_single():
    assert pareto_front([]) == []
    assert pareto_front([P(1.0, 0.3)]) == [True]


def test_nan_is_refused():
    with pytest.raises(ValueError):
        pareto_front([P(math.nan, 0.1), P(1.0, 0.1)])


def test_rows_are_ranked_within_their_group_on_the_chosen_speedup():
    from factories import row

    from prunereg.registry.pareto import ranked

    fast, slow = (
        row("static_depth", "a", 1.5, 0.10, theoretical=1.2),
        row("static_width", "b", 1.2, 0.20, theoretical=1.9),
    )
    alone = row("static_width", "c", 1.1, 0.30, device="A100")  # dominated by both, but in another group
    unrated = row("static_depth", "d", 3.0, None)
    marked = ranked([fast, slow, alone, unrated])
    assert [(r.pareto, r.dominated_by) for r in marked] == [(True, 0), (False, 1), (True, 0), (False, None)]
    slower = row("static_width", "e", 0.6, 0.07, device="B200")  # alone, but dense (1x, no loss) dominates it
    dense = row("dense", "dense", 0.99, 0.0, device="B200")  # dense timed against itself stays on its front
    assert [(r.pareto, r.dominated_by) for r in ranked([slower])] == [(False, 1)]
    assert [(r.pareto, r.dominated_by) for r in ranked([slower, dense])] == [(False, 2), (True, 0)]
    assert frontier([slower]) == [] and frontier([slower, dense]) == [dense]
    noise = replace(row("unstructured", "f", 1.01, 0.05, device="H100"), speedup_low=0.99, speedup_high=1.03)
    faster = replace(noise, speedup_low=1.004)  # measurably faster than dense: on its front
    assert [r.pareto for r in ranked([noise, faster])] == [False, True]
    assert [r.pareto for r in ranked([noise], "theoretical")] == [True]
    by_roofline = ranked([fast, slow], "theoretical")
    assert [r.pareto for r in by_roofline] == [True, True]
    assert frontier([slow, fast, unrated]) == [fast]
    with pytest.raises(ValueError, match="measured' or 'theoretical"):
        ranked([fast], "guessed")  # type: ignore[arg-type]


def test_the_sweep_counts_what_the_pairwise_definition_counts():
    """dominance_rank sweeps in O(n log n); on random points with many ties it must agree with dominates()."""
    import random

    rng = random.Random(16)
    for _ in range(200):
        points = [
            P(rng.choice([1.0, 1.5, 2.0, rng.uniform(0.5, 3)]), rng.choice([0.0, -0.1, 0.1, rng.uniform(-0.2, 0.5)]))
            for _ in range(rng.randint(0, 60))
        ]
        assert dominance_rank(points) == [sum(dominates(q, p) for q in points) for p in points]
