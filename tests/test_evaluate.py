"""End to end on the embedded trained model: evaluate -> registry -> leaderboard, on CPU."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select

from prunereg.evaluate import EvaluationError, evaluate
from prunereg.leaderboard.build import build_site
from prunereg.registry.db import connect
from prunereg.registry.ingest import ingest
from prunereg.registry.schema import Base
from prunereg.spec.catalog import EMBEDDED_MODEL, Phase, Scenario
from prunereg.spec.validate import validate_file

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = (
    Scenario(phase=Phase.prefill, batch_size=1, seq_len=32),
    Scenario(phase=Phase.decode, batch_size=2, seq_len=32),
)


def load(slug: str):
    submission, problems = validate_file(ROOT / "submissions" / f"{slug}.json")
    assert not problems
    return submission


@pytest.fixture(scope="module")
def shortgpt_result():
    demo = {"drop-25", "drop-50"}  # the shipped file also has its papers' points; these two are the demo's
    return load("shortgpt"), evaluate(
        load("shortgpt"), EMBEDDED_MODEL, "cpu", SCENARIOS, warmup=1, repeats=3, only=demo
    )


@pytest.mark.slow
def test_evaluation_measures_every_point_and_scenario(shortgpt_result):
    _, result = shortgpt_result
    assert result.weights == "trained" and result.environment.device == "cpu"
    assert [p.operating_point for p in result.points] == ["drop-25", "drop-50"]
    dense_layers = result.dense_stats.num_layers
    for point, removed in zip(result.points, (2, 4)):
        assert point.stats.num_layers == dense_layers - removed
        assert point.stats.parameters < result.dense_stats.parameters
        assert [lat.scenario for lat in point.latency] == list(SCENARIOS)
        for lat in point.latency:
            assert len(lat.samples) == 3 and lat.p20 <= lat.median <= lat.p80
            assert 1.0 < lat.theoretical_speedup < 1 / (1 - removed / dense_layers) + 1e-9
        (quality,) = point.quality
        assert quality.tokens > 10_000 and not quality.higher_is_better
    losses = [p.quality[0].relative_loss for p in result.points]
    assert 0 < losses[0] < losses[1], "removing more layers must cost more quality"


@pytest.mark.slow
def test_ingesting_an_evaluation_twice_adds_nothing(tmp_path, shortgpt_result):
    submission, result = shortgpt_result
    engine = connect(str(tmp_path / "registry.db"))
    ingest(engine, submission, result)

    def counts():
        with engine.connect() as connection:
            return {
                t.name: connection.execute(select(func.count()).select_from(t)).scalar()
                for t in Base.metadata.sorted_tables
            }

    first = counts()
    assert first["latency_measurements"] == 4 and first["runs"] == 2
    ingest(engine, submission, result)
    assert counts() == first
    site = build_site(engine, tmp_path / "site")
    assert "ShortGPT" in site.read_text()


def test_an_operating_point_that_does_not_fit_the_model_is_refused():
    submission = load("llm-pruner")
    with pytest.raises(EvaluationError, match="does not fit llama-2-7b"):
        bad = submission.model_copy(
            update={
                "adapter": submission.adapter.model_copy(
                    update={
                        "operating_points": [
                            submission.adapter.operating_points[0].model_copy(
                                update={
                                    "params": submission.adapter.operating_points[0].params.model_copy(
                                        update={"attention_sparsity": 0.3}
                                    )
                                }
                            )
                        ]
                    }
                )
            }
        )
        evaluate(bad, "llama-2-7b", "cpu", SCENARIOS)


def test_an_unknown_model_is_refused_in_one_line():
    with pytest.raises(EvaluationError, match="neither a catalog name"):
        evaluate(load("dense"), "no-such-model", "cpu", SCENARIOS)


@pytest.mark.slow
def test_only_the_named_operating_points_are_measured():
    result = evaluate(load("shortgpt"), EMBEDDED_MODEL, "cpu", SCENARIOS[:1], warmup=0, repeats=3, only={"drop-50"})
    assert [p.operating_point for p in result.points] == ["drop-50"]
    assert result.environment.execution_mode == "eager" and result.points[0].latency[0].execution == "eager"


def test_an_unknown_operating_point_is_refused_before_loading_anything():
    with pytest.raises(EvaluationError, match="no operating point named 'drop-99'"):
        evaluate(load("shortgpt"), "no-such-model", "cpu", SCENARIOS, only={"drop-99"})


def test_graph_mode_on_a_cpu_is_refused_in_one_line(tmp_path):
    from typer.testing import CliRunner

    from prunereg.cli import app

    out = CliRunner().invoke(
        app, ["evaluate", str(ROOT / "submissions" / "dense.json"), "--mode", "graph", "--db", str(tmp_path / "r.db")]
    )
    assert out.exit_code == 1 and "Traceback" not in out.output
    assert "error: --mode graph captures CUDA Graphs and needs --device cuda" in out.output


def test_random_weights_prune_with_the_shape_stand_in_and_record_it(monkeypatch):
    """On random weights a calibrated selection's choice means nothing: its stand-in prunes to the same shapes,
    needs no calibration, and the result says so, which ingestion accepts only for random weights."""
    import dataclasses

    import torch

    import prunereg.evaluate as pipeline
    from prunereg.spec.result_checks import stand_in_mismatch

    submission = load("shortgpt")
    trained = pipeline.load_checked(submission, EMBEDDED_MODEL, "cpu", torch.float32, [submission.point("drop-50")])
    random_weights = dataclasses.replace(trained, weights="random", tokenizer=None)
    monkeypatch.setattr(pipeline, "load_checked", lambda *args: random_weights)
    result = evaluate(submission, EMBEDDED_MODEL, "cpu", SCENARIOS[:1], warmup=0, repeats=3, only={"drop-50"})
    (point,) = result.points
    assert (point.stand_in, point.calibration, point.quality) == ("deepest", None, [])
    own = pipeline.params_to_run(trained, submission.point("drop-50"))
    assert own is submission.point("drop-50").params and own.selection == "block_influence"
    same_shapes, _ = pipeline.apply_point(submission, trained, submission.point("drop-50"), params=own.shape_stand_in())
    assert point.stats.num_layers == same_shapes.config.num_hidden_layers == 4
    engine = connect("sqlite://")
    ingest(engine, submission, result)
    assert stand_in_mismatch("trained", own, "deepest") is not None
    assert stand_in_mismatch("random", own, "seeded") == "'seeded' is not this point's shape stand-in ('deepest')"
