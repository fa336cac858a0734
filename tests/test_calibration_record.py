"""Calibration is recorded with every run: what the selection ran on and how long calibrating and pruning took.

End to end on the embedded model (evaluate -> results file -> ingestion -> method page and export), and
the checks that hold a results file's record to its embedded submission's declared calibration.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from factories import make_result, make_submission
from sqlalchemy import select

from prunereg.evaluate import evaluate
from prunereg.leaderboard.build import build_site
from prunereg.registry.db import connect
from prunereg.registry.export import latency_records
from prunereg.registry.ingest import ingest, measurement_digest
from prunereg.registry.queries import method_detail
from prunereg.registry.schema import Run
from prunereg.spec.calibration import Calibration
from prunereg.spec.catalog import EMBEDDED_MODEL, Phase, Scenario, models
from prunereg.spec.result_checks import calibration_is_the_declaration, calibration_mismatch, load_saved
from prunereg.spec.results import CalibrationRecord, EvaluationResult, SavedEvaluation

SLUG = "shortgpt-calibrated"
CALIBRATED = {
    "sparsity": 0.25,
    "selection": "block_influence",
    "calibration": {"sequences": 4, "length": 64, "seed": 1},
}
POINTS = {"bi-25": CALIBRATED, "drop-25": {"sparsity": 0.25}}
SCENARIO = Scenario(phase=Phase.prefill, batch_size=1, seq_len=32)


def submission():
    return make_submission(SLUG, points=POINTS, claims=[])


@pytest.fixture(scope="module")
def evaluated():  # about a minute on two busy cores: the tests using it are slow
    """The embedded model evaluated at a Block Influence point (calibrated) and a deepest one (not)."""
    steps: list[str] = []
    sub = submission()
    result = evaluate(sub, EMBEDDED_MODEL, "cpu", (SCENARIO,), warmup=0, repeats=3, on_step=steps.append)
    return sub, result, steps


@pytest.mark.slow
def test_evaluate_records_the_calibration_used_and_its_time(evaluated):
    sub, result, steps = evaluated
    calibrated, plain = result.points
    assert calibrated.calibration is not None and plain.calibration is None
    record = calibrated.calibration.model_dump()
    seconds = record.pop("seconds")
    assert record == {"dataset": "embedded-train", "sequences": 4, "length": 64, "seed": 1, "tokens": 256}
    assert 0 < seconds < 60
    assert "bi-25 · calibrating" in steps and "drop-25 · calibrating" not in steps
    assert steps.index("bi-25 · calibrating") < steps.index("bi-25 · tracing GEMMs")


@pytest.mark.slow
def test_the_record_is_stored_shown_on_the_method_page_and_exported(evaluated, tmp_path):
    sub, result, _ = evaluated
    engine = connect(str(tmp_path / "registry.db"))
    ingest(engine, sub, result)
    seconds = result.points[0].calibration.seconds
    with engine.connect() as connection:
        stored = dict(connection.execute(select(Run.id, Run.calibration).order_by(Run.id)).all())
    assert list(stored.values()) == [result.points[0].calibration.model_dump(mode="json"), None]
    runs = {p.name: p.runs[0] for p in method_detail(engine, SLUG).submissions[0].points}
    assert runs["bi-25"].calibration["seconds"] == seconds and runs["drop-25"].calibration is None
    build_site(engine, tmp_path / "site")
    page = (tmp_path / "site" / "methods" / f"{SLUG}.html").read_text()
    shown = f"{seconds:.1f}" if seconds >= 1 else f"{seconds:.2g}"
    assert f'<td class="calibration">4 × 64 tokens of embedded-train (seed 1), {shown} s</td>' in page
    assert '<td class="calibration">none</td>' in page
    exported = {r["operating_point"]: r for r in latency_records(engine)}
    assert (exported["bi-25"]["calibration_dataset"], exported["bi-25"]["calibration_tokens"]) == (
        "embedded-train",
        256,
    )
    assert exported["bi-25"]["calibration_seconds"] == seconds
    assert [exported["drop-25"][f"calibration_{f}"] for f in ("dataset", "tokens", "seconds")] == [None] * 3
    engine.dispose()


def saved_file(tmp_path: Path, result: EvaluationResult) -> tuple[Path, Path]:
    """`result` saved as `prunereg evaluate --save` does, next to a submissions folder registering it."""
    sub = submission()
    folder = tmp_path / "submissions"
    folder.mkdir(exist_ok=True)
    (folder / f"{SLUG}.json").write_text(json.dumps(sub.model_dump(mode="json", exclude_defaults=True)))
    path = tmp_path / "saved.json"
    path.write_text(SavedEvaluation(submission=sub, result=result).model_dump_json())
    return path, folder


def with_record(result: EvaluationResult, record: dict | None) -> EvaluationResult:
    document = result.model_dump(mode="json")
    document["points"][0]["calibration"] = record
    return EvaluationResult.model_validate(document)


@pytest.mark.slow
def test_a_saved_evaluation_with_its_record_loads(evaluated, tmp_path):
    saved, problems = load_saved(*saved_file(tmp_path, evaluated[1]))
    assert problems == [] and saved is not None
    assert saved.result.points[0].calibration == evaluated[1].points[0].calibration


GENUINE = {"dataset": "embedded-train", "sequences": 4, "length": 64, "seed": 1, "tokens": 256, "seconds": 2.0}


@pytest.mark.parametrize(
    ("record", "message"),
    [
        (None, "is missing: the point's selection calibrates on 4 × 64 tokens of embedded-train (seed 1)"),
        ({**GENUINE, "seed": 2}, "says 4 × 64 tokens of embedded-train (seed 2), the point declares 4 × 64"),
        ({**GENUINE, "sequences": 8, "tokens": 512}, "says 8 × 64 tokens"),
        ({**GENUINE, "tokens": 255}, "says 255 tokens, but 4 × 64 is 256"),
    ],
)
def test_a_record_that_is_not_the_declaration_is_refused(record, message, tmp_path):
    genuine = make_result(submission())
    assert genuine.points[0].calibration == CalibrationRecord(**GENUINE).model_copy(update={"seconds": 1.4})
    assert list(calibration_is_the_declaration(SavedEvaluation(submission=submission(), result=genuine))) == []
    result = with_record(genuine, record)
    problems = list(calibration_is_the_declaration(SavedEvaluation(submission=submission(), result=result)))
    assert [(p.pointer, p.message[: len(message)]) for p in problems] == [("/result/points/0/calibration", message)]
    with pytest.raises(ValueError, match="bi-25: calibration record"):  # the Python API refuses it too
        ingest(connect(str(tmp_path / "registry.db")), submission(), result)


def test_the_length_used_is_the_declared_one_capped_at_the_models_context():
    context = models()[EMBEDDED_MODEL].max_position_embeddings
    declared = Calibration(sequences=2, length=4 * context)
    capped = CalibrationRecord(
        dataset="embedded-train", sequences=2, length=context, seed=0, tokens=2 * context, seconds=0.5
    )
    assert calibration_mismatch(declared, capped, context) is None
    uncapped = capped.model_copy(update={"length": 4 * context, "tokens": 8 * context})
    assert "capped at" in (calibration_mismatch(declared, uncapped, context) or "")
    assert calibration_mismatch(declared, capped, None) is None  # a local checkpoint: at most the declared length
    assert calibration_mismatch(None, None, context) is None
    assert calibration_mismatch(None, capped, context) == "is given, but the point's selection needs no calibration"


def test_the_record_is_part_of_the_measurement_digest_only_where_there_is_one():
    """Runs without a record (all runs before revision 0004) keep their digests; a record's seconds change it."""
    sub = make_submission(SLUG, points=POINTS, claims=[])
    result = make_result(sub)
    run = {"parameters": 1, "nonzero_parameters": 1, "weight_bytes": 2, "num_layers": 8, "peak_memory_bytes": None,
           "dense_parameters": 2, "dense_weight_bytes": 4, "gemms": []}  # fmt: skip
    assert measurement_digest({**run, "calibration": None}, [], []) == measurement_digest(run, [], [])
    record = result.points[0].calibration
    assert record is not None
    digests = {
        measurement_digest({**run, "calibration": record.model_copy(update={"seconds": s}).model_dump()}, [], [])
        for s in (1.0, 1.5)
    }
    assert len(digests) == 2 and measurement_digest(run, [], []) not in digests
