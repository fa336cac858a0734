"""Execution modes in the registry: how each scenario really ran, why it fell back, and the GPU's
state around the repeats."""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from dataclasses import replace

import pytest
from conftest import make_result, make_submission
from sqlalchemy import select, text
from sqlalchemy.orm import Session
from test_analysis import row
from test_export import export
from test_postgres import BACKENDS, backend_url

from prunereg.registry.db import connect
from prunereg.registry.export import LATENCY_COLUMNS, latency_records
from prunereg.registry.ingest import ingest
from prunereg.registry.queries import leaderboard_rows
from prunereg.registry.schema import LatencyMeasurement
from prunereg.spec.results import EvaluationResult, GpuState

GPU_BEFORE = GpuState(sm_clock_mhz=1980, memory_clock_mhz=3201, temperature_c=41, power_w=118.5)
GPU_AFTER = GpuState(
    sm_clock_mhz=1755, memory_clock_mhz=3201, temperature_c=47, power_w=655.0, clock_event_reasons=["sw_power_cap"]
)
CAPTURE_ERROR = "graph mode failed on the pruned model: RuntimeError: operation not permitted when stream is capturing"
THEORETICAL = {"width-25": 1.30, "width-50": 1.87}
EAGER = {"width-25": 0.98, "width-50": 1.00}  # launch-bound eager decode hides width pruning's gain
GRAPH = {"width-25": 1.01, "width-50": 1.80}  # width-25 fell back, so its figure is an eager one


def in_mode(result: EvaluationResult, mode: str, fallbacks: Mapping[str, str] | None = None) -> EvaluationResult:
    """`result` measured in `mode`, with NVML readings around every scenario; the points named in
    `fallbacks` could not use the mode and ran eagerly, for the reason given."""
    document = result.model_dump(mode="json")
    document["environment"]["execution_mode"] = mode
    for point in document["points"]:
        reason = (fallbacks or {}).get(point["operating_point"])
        for latency in point["latency"]:
            latency.update(
                execution="eager" if reason else mode, fallback=reason,
                gpu_before=GPU_BEFORE.model_dump(), gpu_after=GPU_AFTER.model_dump(),
            )  # fmt: skip
    return EvaluationResult.model_validate(document)


@pytest.fixture
def width():
    return make_submission("llm-pruner-test", adapter="width", name="LLM-Pruner test", claims=[])


def ingest_both_modes(engine, width) -> None:
    """The same submission timed by the eager harness and by the graph harness (width-25 fell back)."""
    ingest(engine, width, make_result(width, speedups=EAGER, theoretical=THEORETICAL))
    graph = make_result(width, speedups=GRAPH, theoretical=THEORETICAL)
    ingest(engine, width, in_mode(graph, "graph", {"width-25": CAPTURE_ERROR}))


@pytest.mark.parametrize("backend", BACKENDS)
def test_ingest_stores_how_each_scenario_ran(backend, width, tmp_path):
    with backend_url(backend, tmp_path) as url:
        engine = connect(url)
        ingest_both_modes(engine, width)
        with Session(engine) as session:
            stored = {(m.run.execution_mode, m.run.operating_point.name, m.execution, m.fallback, m.gpu_after is None)
                      for m in session.scalars(select(LatencyMeasurement))}  # fmt: skip
        assert stored == {
            ("eager", "width-25", "eager", None, True),
            ("eager", "width-50", "eager", None, True),
            ("graph", "width-25", "eager", CAPTURE_ERROR, False),
            ("graph", "width-50", "graph", None, False),
        }
        with engine.connect() as connection:  # no reading is SQL NULL, as in rows from before revision 0002
            sql = "SELECT count(*) FROM latency_measurements WHERE gpu_before IS NULL"
            assert connection.execute(text(sql)).scalar() == 4
        rows = leaderboard_rows(engine)
        graph = [r for r in rows if r.execution_mode == "graph"]
        assert {(r.operating_point, r.execution, r.fallback) for r in graph} == {
            ("width-25", "eager", CAPTURE_ERROR), ("width-50", "graph", None),
        }  # fmt: skip
        assert all(r.gpu_before == GPU_BEFORE.model_dump() and r.gpu_after == GPU_AFTER.model_dump() for r in graph)
        assert {r.gpu_change for r in rows} == {None, "1980→1755 MHz, 41→47 °C; sw_power_cap"}
        engine.dispose()


def test_gpu_change_names_a_missing_reading():
    (row,) = [r for r in _rows_of_one_point() if r.execution_mode == "graph"]
    assert replace(row, gpu_before=None).gpu_change == "?→1755 MHz, ?→47 °C; sw_power_cap"
    assert replace(row, gpu_after=None).gpu_change == "1980→? MHz, 41→? °C"


@pytest.mark.parametrize(
    ("execution", "fallback"), [("eager", None), ("graph", CAPTURE_ERROR)], ids=["mode-left-silently", "reason-without-leaving"]
)
def test_ingest_refuses_a_fallback_that_does_not_add_up(engine, width, execution, fallback):
    result = in_mode(make_result(width), "graph")
    document = result.model_dump(mode="json")
    document["points"][0]["latency"][0].update(execution=execution, fallback=fallback)
    with pytest.raises(ValueError, match="width-25 prefill-b1-s256: ran"):
        ingest(engine, width, EvaluationResult.model_validate(document))
    assert leaderboard_rows(engine) == []


def test_export_carries_execution_fallback_and_gpu_columns(engine, width, tmp_db):
    ingest_both_modes(engine, width)
    records = {(r["env_execution_mode"], r["operating_point"], r["scenario"]): r for r in latency_records(engine)}
    fell_back = records[("graph", "width-25", "decode-b1-c256")]
    assert (fell_back["execution"], fell_back["fallback"]) == ("eager", CAPTURE_ERROR)
    assert (fell_back["gpu_before_sm_clock_mhz"], fell_back["gpu_after_sm_clock_mhz"]) == (1980, 1755)
    assert (fell_back["gpu_before_temperature_c"], fell_back["gpu_after_power_w"]) == (41, 655.0)
    assert fell_back["gpu_after_clock_event_reasons"] == "sw_power_cap" and fell_back["gpu_before_clock_event_reasons"] == ""
    eager = records[("eager", "width-50", "prefill-b1-s256")]
    assert eager["execution"] == "eager" and eager["fallback"] is None and eager["gpu_before_sm_clock_mhz"] is None
    rows = list(csv.DictReader(io.StringIO(export(tmp_db, "--format", "csv"))))
    assert tuple(rows[0]) == LATENCY_COLUMNS
    graph = [r for r in rows if r["env_execution_mode"] == "graph" and r["operating_point"] == "width-50"]
    assert len(graph) == 2 and all(
        (r["execution"], r["fallback"], r["gpu_after_sm_clock_mhz"], r["gpu_after_clock_event_reasons"])
        == ("graph", "", "1755", "sw_power_cap")
        for r in graph
    )


def _rows_of_one_point():
    """Leaderboard rows of one point in one scenario, eager and graph, built by hand."""
    eager = row("static_width", "width-50", 1.0, None, theoretical=1.87)
    graph = replace(eager, execution_mode="graph", execution="graph", speedup=1.8, realization=1.8 / 1.87,
                    gpu_before=GPU_BEFORE.model_dump(), gpu_after=GPU_AFTER.model_dump())  # fmt: skip
    return [eager, graph]
