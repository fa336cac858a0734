"""Frontier ranks and transition bands on hand-made rows, and the `frontier` command on a real registry."""

from __future__ import annotations

import math
import os
import random
import subprocess
import sys
from dataclasses import replace

import pytest
from factories import claim, make_environment, make_result, make_submission, row

from prunereg.registry.analysis import Band, scenario_analysis, transition_bands
from prunereg.registry.ingest import ingest
from prunereg.registry.pareto import frontier, ranked
from prunereg.registry.queries import method_detail, methods, reported_rows

PAPER_LIKE = [
    row("dense", "dense", 1.01, 0.0, method="Dense"),
    row("static_depth", "drop-5", 1.10, 0.0, method="ShortGPT"),
    row("static_depth", "drop-10", 1.30, 0.03, method="ShortGPT"),
    row("dynamic_depth", "capacity-75", 1.45, 0.05, method="MoD"),
    row("dynamic_depth", "capacity-50", 1.60, 0.12, method="MoD"),
    row("static_width", "width-25", 1.80, 0.17, method="LLM-Pruner"),
    row("static_width", "width-50", 2.00, 0.26, method="LLM-Pruner"),
    row("unstructured", "sparse-50", 1.00, 0.02, method="Wanda"),
    row("static_depth", "no-quality", 9.00, None, method="ShortGPT"),
]


def test_bands_reproduce_a_three_band_paper_result():
    bands = transition_bands(PAPER_LIKE)
    assert [(b.family, round(b.low, 6), round(b.high, 6)) for b in bands] == [
        ("static_depth", 0.0, 0.04),
        ("dynamic_depth", 0.05, 0.16),
        ("static_width", 0.17, 0.26),
    ]
    assert bands[0] == Band("static_depth", 0.0, 0.04, "ShortGPT · drop-5", 1.10)
    assert (bands[1].method, bands[1].speedup, bands[1].family) == ("MoD · capacity-75", 1.45, "dynamic_depth")
    assert bands[2].method == "LLM-Pruner · width-25"


def test_bands_reach_the_largest_loss_and_ignore_rows_without_quality():
    bands = transition_bands([*PAPER_LIKE, row("static_depth", "drop-40", 1.50, 0.30, method="ShortGPT")])
    assert bands[-1].family == "static_width" and round(bands[-1].high, 6) == 0.30
    assert all(b.speedup < 9 for b in bands)  # the 9x row has no quality
    off_grid = transition_bands([row("static_depth", "a", 1.3, 0.02), row("static_width", "b", 1.9, 0.253)])
    assert (off_grid[-1].family, off_grid[-1].low, off_grid[-1].high) == ("static_width", 0.26, 0.26)
    assert transition_bands([row("static_depth", "x", 3.0, None)]) == []


def test_dense_wins_only_where_nothing_faster_fits():
    bands = transition_bands([row("static_depth", "drop-10", 1.3, 0.03, method="ShortGPT")])
    assert [(b.family, round(b.low, 6), round(b.high, 6)) for b in bands] == [
        ("dense", 0.0, 0.02), ("static_depth", 0.03, 0.03),
    ]  # fmt: skip
    assert bands[0].speedup == 1.0 and bands[0].method == "dense"


def test_a_point_whose_interval_reaches_one_takes_no_band_from_dense():
    noise = replace(row("unstructured", "sparse-50", 1.01, 0.05, method="Wanda"), speedup_low=0.99, speedup_high=1.03)
    assert [b.family for b in transition_bands([noise])] == ["dense"]
    faster = replace(noise, speedup_low=1.004)
    assert [b.family for b in transition_bands([faster])] == ["dense", "unstructured"]
    assert [b.family for b in transition_bands([noise], speedup="theoretical")] == ["dense", "unstructured"]


def test_dense_only_is_one_band_at_zero():
    assert transition_bands([row("dense", "dense", 0.98, 0.0, method="Dense")]) == [
        Band("dense", 0.0, 0.0, "Dense · dense", 1.0)
    ]


def test_ties_go_to_the_smaller_loss_then_the_family_name():
    smaller_loss = [row("static_width", "a", 1.5, 0.02), row("static_depth", "b", 1.5, 0.01)]
    assert [b.family for b in transition_bands(smaller_loss)] == ["dense", "static_depth"]
    same_point = [row("static_width", "a", 1.5, 0.01), row("static_depth", "b", 1.5, 0.01)]
    assert [b.family for b in transition_bands(same_point)] == ["dense", "static_depth"]
    no_faster = [row("static_depth", "b", 1.0, 0.0)]  # only as fast as dense: dense keeps it
    assert [b.family for b in transition_bands(no_faster)] == ["dense"]


def test_theoretical_speedup_and_step():
    rows = [row("static_depth", "a", 1.3, 0.02, theoretical=1.3), row("static_k_2_4", "b", 0.4, 0.02, theoretical=1.9)]
    assert transition_bands(rows)[-1].family == "static_depth"
    assert transition_bands(rows, speedup="theoretical")[-1].family == "static_k_2_4"
    bands = transition_bands(rows, step=0.005)
    assert [(b.family, b.low, b.high) for b in bands] == [("dense", 0.0, 0.015), ("static_depth", 0.02, 0.02)]
    with pytest.raises(ValueError):
        transition_bands(rows, step=0)


def winners_tolerance_by_tolerance(rows, step: float) -> list[tuple[str, float]]:
    """The definition the bands follow: at each grid tolerance, the fastest point (or dense) within it. Factory rows
    carry no speedup interval, so each competes at its own speedup."""
    points = [("dense", 0.0, 1.0, "dense")] + [
        (r.family, r.quality_loss, r.speedup, f"{r.method_name} · {r.operating_point}")
        for r in rows if r.family != "dense"
    ]  # fmt: skip
    top = max(loss for _, loss, _, _ in points)
    out = []
    for i in range(math.ceil(top / step - 1e-9) + 1):
        t = round(i * step, 12)
        fitting = [p for p in points if p[1] <= t + 1e-9]
        out.append((min(fitting, key=lambda p: (-p[2], p[1], p[0], p[3]))[0], t))
    return out


@pytest.mark.parametrize("seed", range(40))
def test_bands_are_the_winners_of_every_tolerance_merged(seed):
    """Bands walk the grid from one point's entry to the next; merged per tolerance they must give the same
    winners, for losses on and off the grid, tied speedups, and perplexity losses of thousands of percent."""
    rng = random.Random(seed)
    families = ["static_depth", "static_width", "unstructured", "dynamic_depth"]
    rows = [
        row(rng.choice(families), f"p{i}", rng.choice([0.9, 1.2, 1.2, 1.5, 2.0, rng.uniform(0.8, 2.5)]),
            rng.choice([0.0, 0.03, 0.07, 0.253, rng.uniform(-0.02, 0.4), rng.uniform(0, 90)]))
        for i in range(rng.randint(1, 12))
    ]  # fmt: skip
    step = rng.choice([0.01, 0.005, 0.02])
    expected = winners_tolerance_by_tolerance(rows, step)
    merged = [(b.family, t) for b in transition_bands(rows, step) for f, t in expected if b.low <= t <= b.high]
    assert merged == expected


def test_bands_refuse_rows_of_different_groups():
    with pytest.raises(ValueError, match="one group"):
        transition_bands([row("static_depth", "a", 1.3, 0.02), row("static_width", "b", 1.4, 0.03, device="A100")])


def test_frontier_and_rank_on_hand_made_points():
    a, b, c, d = (row("static_depth", "a", 1.5, 0.10), row("static_width", "b", 1.2, 0.05),
                  row("unstructured", "c", 1.1, 0.20), row("dynamic_depth", "d", 1.0, 0.30))  # fmt: skip
    none = row("static_k_2_4", "e", 3.0, None)
    marked = {r.operating_point: r for r in ranked([a, b, c, d, none])}  # d at 1.0x: dense dominates it too
    assert {p: (r.pareto, r.dominated_by) for p, r in marked.items()} == {
        "a": (True, 0), "b": (True, 0), "c": (False, 2), "d": (False, 4), "e": (False, None),
    }  # fmt: skip
    assert [r.operating_point for r in frontier([a, b, c, d, none])] == ["b", "a"]


@pytest.fixture
def registry(tmp_path):
    from prunereg.registry.db import connect

    path = tmp_path / "frontier.db"
    engine = connect(str(path))
    depth = make_submission("shortgpt-test", name="ShortGPT Test")
    width = make_submission("llm-pruner-test", name="LLM Pruner Test", adapter="width", claims=[])
    ingest(
        engine,
        depth,
        make_result(depth, speedups={"drop-25": 1.3, "drop-50": 1.9}, losses={"drop-25": 0.02, "drop-50": 0.30}),
    )
    ingest(
        engine,
        width,
        make_result(width, speedups={"width-25": 1.5, "width-50": 1.8}, losses={"width-25": 0.10, "width-50": 0.25}),
    )
    cpu = make_environment(device="cpu", device_name="x86 CPU", dtype="float32", device_profile=None)
    ingest(engine, depth, make_result(depth, environment=cpu, losses={}))
    yield engine, path
    engine.dispose()


def test_scenario_analysis_groups_filters_and_bands(registry):
    engine, _ = registry
    both = scenario_analysis(engine, "prefill", 1)
    assert [a.key.device_name for a in both] == ["NVIDIA H200", "x86 CPU"]
    (h200,) = scenario_analysis(engine, "prefill", 1, device="h200")
    assert h200.quality_source == "measured" and h200.has_quality
    assert [r.operating_point for r in h200.frontier] == ["drop-25", "width-25", "width-50", "drop-50"]
    assert [(b.family, round(b.low, 6), round(b.high, 6)) for b in h200.bands] == [
        ("dense", 0.0, 0.01), ("static_depth", 0.02, 0.09), ("static_width", 0.1, 0.29), ("static_depth", 0.3, 0.3),
    ]  # fmt: skip
    (cpu,) = scenario_analysis(engine, "prefill", 1, device="cpu")
    assert not cpu.has_quality and cpu.frontier == [] and cpu.bands == []
    assert scenario_analysis(engine, "decode", 8) == []
    assert scenario_analysis(engine, "prefill", 1, model="llama-3.1-8b") == []


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "prunereg.cli", *args], capture_output=True, text=True,
        env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip


def test_frontier_command_prints_frontier_bands_and_quality_source(registry):
    _, path = registry
    result = cli("frontier", "--phase", "prefill", "--batch", "1", "--device", "H200", "--db", str(path))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "prunereg-mini · NVIDIA H200 · bfloat16 · eager · prefill-b1-s256" in out
    assert "quality: MEASURED by prunereg" in out and "REPORTED" not in out
    for text in ("ShortGPT Test", "drop-25", "LLM Pruner Test", "tolerance", "best point", "2–9 %", "10–29 %", "1.50x"):
        assert text in out, text
    assert "x86 CPU" not in out


def test_frontier_command_exits_1_with_one_line_when_nothing_matches(registry):
    _, path = registry
    result = cli("frontier", "--phase", "decode", "--batch", "32", "--db", str(path))
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0 and "no latency rows" in result.stderr


def test_frontier_command_does_not_import_torch(registry):
    _, path = registry
    code = (
        "import sys\nfrom prunereg.cli import app\n"
        f"try:\n    app(['frontier', '--phase', 'prefill', '--batch', '1', '--db', {str(path)!r}])\n"
        "except SystemExit as e:\n    assert not e.code, e.code\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


@pytest.fixture
def reported(tmp_path):
    """Two methods with claims on llama-2-7b, measured on llama-2-7b shapes (random weights, no measured quality)."""
    from prunereg.registry.db import connect

    engine = connect(str(tmp_path / "reported.db"))
    depth = make_submission(
        "shortgpt-test",
        name="ShortGPT Test",
        claims=[
            claim("drop-25", 6.0),
            claim("drop-50", 20.0),
            claim("drop-25", 55.0, 60.0, task="zero-shot-average"),
            claim("drop-25", 7.1, 5.68, base_model="llama-7b"),  # LLaMA-1: Llama-2-7B's shapes
            claim("drop-25", 9.0, 4.88, base_model="llama-2-13b"),  # other shapes, not timed
        ],
    )
    recovered = {"data": "Alpaca", "method": "LoRA"}
    width = make_submission(
        "llm-pruner-test",
        name="LLM Pruner Test",
        adapter="width",
        claims=[
            claim("width-25", 5.5),
            claim("width-50", 7.0, recovery=recovered),
            claim("width-50", 9.0, base_model="llama-3-8b"),
        ],
    )
    shapes = {"model": "llama-2-7b", "weights": "random", "losses": {}}
    ingest(engine, depth, make_result(depth, speedups={"drop-25": 1.3, "drop-50": 1.9}, **shapes))
    ingest(engine, width, make_result(width, speedups={"width-25": 1.2, "width-50": 1.8}, **shapes))
    yield engine, tmp_path / "reported.db"
    engine.dispose()


def test_reported_quality_joins_claims_with_the_latency_of_their_point_and_base_model(reported):
    engine, _ = reported
    assert all(not a.has_quality for a in scenario_analysis(engine, "prefill", 1))  # measured: random weights only
    groups = scenario_analysis(engine, "prefill", 1, quality="reported", model="llama-2-7b")
    assert [(a.quality_source, a.key.model, a.key.task) for a in groups] == [
        ("reported", "llama-2-7b", "wikitext2 · perplexity · 2048-token windows"),
        ("reported", "llama-2-7b", "zero-shot-average · mean_accuracy · of arc_easy, piqa"),
    ]
    perplexity, average = groups
    losses = {(r.method_slug, r.operating_point): round(r.quality_loss, 6) for r in perplexity.rows}
    assert losses == {
        ("shortgpt-test", "drop-25"): 0.2,
        ("shortgpt-test", "drop-50"): 3.0,
        ("llm-pruner-test", "width-25"): 0.1,
    }
    assert [r.operating_point for r in perplexity.frontier] == ["width-25", "drop-25", "drop-50"]
    assert [b.family for b in perplexity.bands] == ["dense", "static_width", "static_depth"]
    assert all(r.arxiv == "9999.00002v3" and r.paper_table == "Table 4" for r in perplexity.rows)
    ((row),) = average.rows
    assert row.quality_loss == pytest.approx(5 / 60) and row.recovery is None


def test_a_base_model_borrows_the_latency_of_a_timed_model_of_the_same_shapes(reported):
    engine, _ = reported
    groups = scenario_analysis(engine, "prefill", 1, quality="reported")
    assert sorted({a.key.model for a in groups}) == ["llama-2-7b", "llama-7b"]  # llama-2-13b was never timed
    (llama_1,) = scenario_analysis(engine, "prefill", 1, quality="reported", model="llama-7b")
    ((row),) = llama_1.rows
    assert (row.base_model, row.model, row.operating_point) == ("llama-7b", "llama-2-7b", "drop-25")
    assert row.quality_loss == pytest.approx(7.1 / 5.68 - 1) and row.speedup == pytest.approx(1.3)


def test_a_corrected_claim_replaces_the_one_its_superseded_version_carries(reported):
    """The registered version's claims count; a results file of the earlier version adds its runs, not its claims."""
    engine, _ = reported
    earlier = make_submission("shortgpt-test", name="ShortGPT Test", claims=[claim("drop-25", 6.0)])
    corrected = make_submission(
        "shortgpt-test", name="ShortGPT Test", claims=[claim("drop-25", 6.5, base_model="llama-7b")]
    )
    ingest(engine, corrected)  # prunereg register
    shapes = {"model": "llama-2-7b", "weights": "random", "losses": {}}
    ingest(
        engine, earlier, make_result(earlier, speedups={"drop-25": 1.3, "drop-50": 1.9}, **shapes), update_method=False
    )
    depth = [r for r in reported_rows(engine) if r.method_slug == "shortgpt-test"]
    assert {(r.base_model, r.operating_point, r.value) for r in depth} == {("llama-7b", "drop-25", 6.5)}
    assert earlier.spec_hash() in {r.spec_hash for r in depth}  # its run times the same point
    summaries = [m for m in methods(engine) if m.slug == "shortgpt-test"] + [
        method_detail(engine, "shortgpt-test").summary
    ]
    assert [m.division_reason for m in summaries] == ["quality only claimed (1 claim), none measured by prunereg"] * 2


def test_recovery_claims_join_only_when_asked(reported):
    engine, _ = reported
    (perplexity, _) = scenario_analysis(engine, "prefill", 1, quality="reported", recovery=True, model="llama-2-7b")
    (width_50,) = [r for r in perplexity.rows if r.operating_point == "width-50"]
    assert width_50.recovery == {"data": "Alpaca", "method": "LoRA", "tokens": None}
    assert width_50.quality_loss == pytest.approx(0.4)


def test_frontier_command_labels_reported_quality_and_its_sources(reported):
    _, path = reported
    result = cli("frontier", "--quality", "reported", "--phase", "prefill", "--batch", "1", "--db", str(path))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "llama-2-7b · NVIDIA H200 · bfloat16 · eager · prefill-b1-s256 · reported wikitext2" in out
    assert "reported quality" in out and "arXiv:9999.00002v3 Table 4" in out and "quality: REPORTED in papers" in out
    assert "MEASURED" not in out
