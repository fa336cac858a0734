"""A speedup's interval: the paired bootstrap on known samples, the noise rule, repeats added while it is too
wide, and ingestion computing it from the samples (never reading it from a file)."""

from __future__ import annotations

import json
import random
import re

import pytest
from factories import make_result, make_submission
from sqlalchemy import select
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from prunereg.cli import app
from prunereg.harness.latency import busy, repeated
from prunereg.registry.analysis import scenario_analysis
from prunereg.registry.db import connect
from prunereg.registry.ingest import ingest
from prunereg.registry.queries import leaderboard_rows
from prunereg.registry.schema import LatencyMeasurement
from prunereg.spec.result_checks import load_saved
from prunereg.spec.results import SavedEvaluation, Timing, latency_summary
from prunereg.spec.uncertainty import MAX_HALF_WIDTH, NOISY_SPREAD, half_width, noise, speedup_interval


def test_identical_pairs_give_a_zero_width_interval_at_the_exact_ratio():
    assert speedup_interval([10.0] * 7, [4.0] * 7) == (2.5, 2.5)


def test_two_pairs_give_the_interval_by_hand():
    """Pairs (4, 2) and (6, 2): a resample is both of the first (ratio 2), both of the second (3) or one of
    each (median 5 over 2: 2.5). The 2.5th and 97.5th percentiles of 2000 resamples are the two extremes."""
    assert speedup_interval([4.0, 6.0], [2.0, 2.0]) == (2.0, 3.0)


def test_pairs_are_resampled_together():
    """Dense exactly twice pruned in every pair, however much the pairs vary: every resample's ratio is 2.
    Broken apart (the dense repeats shuffled against the pruned ones), the same numbers give a wide interval."""
    pruned = [5.0 * (1 + 0.4 * random.Random(i).random()) for i in range(30)]
    dense = [2 * p for p in pruned]
    assert speedup_interval(dense, pruned) == pytest.approx((2.0, 2.0), rel=1e-12)
    shuffled = dense[:]
    random.Random(1).shuffle(shuffled)
    low, high = speedup_interval(shuffled, pruned)
    assert high - low > 0.1


def test_the_interval_is_a_function_of_the_samples():
    rng = random.Random(0)
    dense = [10 * (1 + 0.1 * rng.random()) for _ in range(40)]
    pruned = [5 * (1 + 0.1 * rng.random()) for _ in range(40)]
    assert speedup_interval(dense, pruned) == speedup_interval(list(dense), list(pruned))
    assert speedup_interval(dense, pruned) != speedup_interval(dense, pruned, seed=1)
    low, high = speedup_interval(dense, pruned)
    assert low <= latency_summary(dense)["median"] / latency_summary(pruned)["median"] <= high


@pytest.mark.parametrize("dense, pruned", [([1.0, 2.0], [1.0]), ([], [])])
def test_unpaired_samples_are_refused(dense, pruned):
    with pytest.raises(ValueError, match="as many dense as pruned"):
        speedup_interval(dense, pruned)


def test_noise_reads_the_interval_and_falls_back_to_the_spread():
    assert noise(2.0, 1.95, 2.05, spread=0.5) is None  # ±2.5 %: the interval decides, not the spread
    assert noise(2.0, 1.62, 2.31, spread=0.0) == "speedup interval 1.62–2.31 wider than ±5% (±17.2%)"
    assert half_width(2.0, 1.62, 2.31) > MAX_HALF_WIDTH
    assert noise(2.0, None, None, spread=NOISY_SPREAD) is None
    assert "p80/p20 spread 4.0% above 3%" in noise(2.0, None, None, spread=0.04)


def pairs_timer(ratios):
    """A fake `time_pairs`: pair i has dense time ratios(i) against a pruned time of 1 ms."""
    dense: list[float] = []
    pruned: list[float] = []

    def time_pairs(count: int):
        for _ in range(count):
            dense.append(ratios(len(dense)))
            pruned.append(1.0)
        return dense, pruned

    return time_pairs


def test_a_tight_interval_adds_no_repeats():
    dense, _ = repeated(pairs_timer(lambda i: 2.0 + 0.01 * (i % 3)), repeats=5, max_repeats=100)
    assert len(dense) == 5


def test_a_wide_interval_doubles_the_repeats_until_it_is_tight():
    """Two wild pairs among the first five; the pairs after them are quiet, so doubling to 10 and 20 tightens."""
    dense, pruned = repeated(pairs_timer(lambda i: 3.5 if i in (1, 3) else 2.0), repeats=5, max_repeats=100)
    assert len(dense) in (10, 20, 40)
    low, high = speedup_interval(dense, pruned)
    assert half_width(2.0, low, high) <= MAX_HALF_WIDTH


def test_repeats_stop_at_the_cap():
    noisy = random.Random(0)
    dense, _ = repeated(pairs_timer(lambda i: noisy.choice([1.0, 3.0])), repeats=5, max_repeats=12)
    assert len(dense) == 12  # 5, then 5 more, then the 2 left to the cap


def test_a_busy_machine_is_named():
    quiet = Timing(threads=2, cpus=2, load_before=1.5, repeats=15, added_repeats=0, max_repeats=60)
    assert busy(quiet) is None
    assert busy(quiet.model_copy(update={"load_before": None})) is None
    assert busy(quiet.model_copy(update={"load_before": 4.2})) == (
        "load average 4.20 over 2 CPUs before timing: the machine is busy"
    )


def paired(result, dense_factors):
    """`result` with dense samples (the dense median times `dense_factors`) on every latency."""
    document = result.model_dump(mode="json")
    for point in document["points"]:
        for latency in point["latency"]:
            latency["dense_samples"] = [latency["dense_median"] * f for f in dense_factors]
    return type(result).model_validate(document)


def stored_latency(engine) -> list[LatencyMeasurement]:
    with Session(engine) as session:
        return list(session.scalars(select(LatencyMeasurement).order_by(LatencyMeasurement.id)))


def test_ingest_computes_the_interval_from_the_samples(tmp_path):
    engine = connect(f"sqlite:///{tmp_path / 'r.db'}")
    sub = make_submission()
    result = paired(make_result(sub), (0.99, 1.0, 1.01))
    ingest(engine, sub, result)
    stored = stored_latency(engine)
    latencies = [lat for point in result.points for lat in point.latency]
    assert len(stored) == len(latencies)
    for row, latency in zip(stored, latencies):
        assert row.dense_samples == latency.dense_samples
        assert (row.speedup_low, row.speedup_high) == speedup_interval(latency.dense_samples, latency.samples)


def test_a_latency_without_dense_samples_has_no_interval_until_the_same_measurement_brings_them(tmp_path):
    """Rows from before revision 0010 are like this one; the same results file ingested again fills them in."""
    engine = connect(f"sqlite:///{tmp_path / 'r.db'}")
    sub = make_submission()
    ingest(engine, sub, make_result(sub, paired=False))
    assert {(r.dense_samples, r.speedup_low, r.speedup_high) for r in stored_latency(engine)} == {(None, None, None)}
    summary = ingest(engine, sub, paired(make_result(sub), (0.99, 1.0, 1.01)))
    assert not summary.changed  # the same runs: the digest holds no dense samples
    assert all(r.speedup_low is not None and r.dense_samples for r in stored_latency(engine))


def test_ingest_refuses_a_median_that_is_not_its_samples(tmp_path):
    """A speedup from one median and an interval from other samples would be two measurements in one row."""
    engine = connect(f"sqlite:///{tmp_path / 'r.db'}")
    sub = make_submission()
    result = paired(make_result(sub), (0.99, 1.0, 1.01))
    document = result.model_dump(mode="json")
    document["points"][0]["latency"][0]["median"] *= 0.5  # twice the speedup, the samples unchanged
    with pytest.raises(ValueError, match="median is .*, the samples give"):
        ingest(engine, sub, type(result).model_validate(document))
    assert stored_latency(engine) == []


def saved_file(tmp_path, change) -> tuple:
    """A genuine saved evaluation of the registered submission, changed by `change(latency dict)`, on disk."""
    sub = make_submission()
    folder = tmp_path / "submissions"
    folder.mkdir()
    (folder / f"{sub.method.slug}.json").write_text(sub.model_dump_json(exclude_defaults=True))
    from test_hostile_results import genuine

    document = genuine()
    change(document["result"]["points"][0]["latency"][0])
    path = tmp_path / "result.json"
    path.write_text(json.dumps(document))
    return path, folder


def test_a_results_file_cannot_state_an_interval(tmp_path):
    path, folder = saved_file(tmp_path, lambda latency: latency.update(speedup_low=1.99, speedup_high=2.01))
    saved, problems = load_saved(path, folder)
    assert saved is None
    assert {(p.pointer, p.message) for p in problems} == {
        ("/result/points/0/latency/0/speedup_low", "unknown field"),
        ("/result/points/0/latency/0/speedup_high", "unknown field"),
    }


def test_tight_samples_with_a_median_they_do_not_give_are_refused(tmp_path):
    """Dense and pruned samples that would give a zero-width interval, next to a median that doubles the speedup."""

    def tight(latency):
        latency.update(samples=[5.0] * 5, dense_samples=[10.0] * 5, dense_median=10.0, p20=2.5, p80=2.5, median=2.5)

    path, folder = saved_file(tmp_path, tight)
    saved, problems = load_saved(path, folder)
    assert saved is None
    assert ("/result/points/0/latency/0/median", "is 2.5, the samples give 5") in {
        (p.pointer, p.message) for p in problems
    }


def test_a_timing_record_must_count_the_samples(tmp_path):
    def padded(latency):
        latency["timing"] = {"threads": 2, "cpus": 2, "repeats": 3, "added_repeats": 0, "max_repeats": 12}

    path, folder = saved_file(tmp_path, padded)
    saved, problems = load_saved(path, folder)
    assert saved is None
    assert [(p.pointer, p.message) for p in problems] == [
        ("/result/points/0/latency/0/timing", "says 3 repeats and 0 added, but there are 5 samples")
    ]


def test_a_timing_record_is_kept_with_its_latency(tmp_path):
    timing = {"threads": 2, "cpus": 2, "load_before": 0.7, "repeats": 3, "added_repeats": 2, "max_repeats": 12}
    path, folder = saved_file(tmp_path, lambda latency: latency.update(timing=timing))
    saved, problems = load_saved(path, folder)
    assert problems == [] and isinstance(saved, SavedEvaluation)
    engine = connect(f"sqlite:///{tmp_path / 'r.db'}")
    ingest(engine, saved.submission, saved.result)
    assert [r.timing for r in stored_latency(engine)].count(timing) == 1


def with_noisy_point(engine, noisy: str = "drop-50"):
    """ShortGPT's two points; `noisy` has the fastest speedup (2.2x) but dense repeats that swing by ±60 %."""
    sub = make_submission()
    document = make_result(sub, speedups={"drop-25": 1.3, "drop-50": 2.2}).model_dump(mode="json")
    for point in document["points"]:
        if point["operating_point"] == noisy:
            for latency in point["latency"]:
                latency["dense_samples"] = [latency["dense_median"] * f for f in (0.4, 1.0, 1.6)]
    ingest(engine, sub, type(make_result(sub)).model_validate(document))


def test_a_noisy_point_is_left_out_of_the_front_and_the_bands_with_its_reason(tmp_path):
    engine = connect(f"sqlite:///{tmp_path / 'r.db'}")
    with_noisy_point(engine)
    rows = leaderboard_rows(engine)
    noisy = [r for r in rows if r.operating_point == "drop-50"]
    assert noisy and all(r.excluded and r.excluded.startswith("speedup interval ") for r in noisy)
    assert all(not r.pareto and r.dominated_by is None and r.speedup_low < 2.2 < r.speedup_high for r in noisy)
    assert all(r.pareto and r.excluded is None for r in rows if r.operating_point == "drop-25")
    for analysis in scenario_analysis(engine, "decode", 1) + scenario_analysis(engine, "prefill", 1):
        assert [r.operating_point for r in analysis.frontier] == ["drop-25"]
        assert [r.operating_point for r in analysis.excluded] == ["drop-50"]
        assert [r.operating_point for r in analysis.by_rank()] == ["drop-25"]
        assert max(b.speedup for b in analysis.bands) == pytest.approx(1.3)  # 2.2x would win every band from 22 %
        theoretical = scenario_analysis(engine, analysis.key.scenario.split("-")[0], 1, speedup="theoretical")
        assert all(not a.excluded for a in theoretical)  # the roofline has no noise: nothing left out


def test_frontier_prints_intervals_noise_and_what_it_left_out(tmp_path):
    db = f"sqlite:///{tmp_path / 'r.db'}"
    with_noisy_point(connect(db))
    result = CliRunner().invoke(app, ["frontier", "--phase", "decode", "--batch", "1", "--db", db])
    assert result.exit_code == 0, result.output
    front, left_out = result.output.split("left out of the frontier and the bands")
    assert "95 % interval" in front and "drop-25" in front and "drop-50" not in front
    (row,) = [line for line in front.splitlines() if "drop-25" in line]
    assert re.search(r"1\.30x │\s+1\.26–1\.33x │\s+│", row), row  # its interval (0.98–1.03 of 1.3), no noise flag
    assert "drop-50" in left_out and "speedup interval" in left_out and "wider than ±5%" in left_out
