"""`prunereg export`: flat CSV and JSON tables with every latency row's provenance and every quality figure."""

from __future__ import annotations

import csv
import io
import json

import pytest
from factories import make_result, make_submission
from pages import export

from prunereg.registry.export import LATENCY_COLUMNS, QUALITY_COLUMNS, latency_records, quality_records
from prunereg.registry.ingest import ingest


@pytest.fixture
def registry(tmp_path):
    from prunereg.registry.db import connect

    path = tmp_path / "export.db"
    engine = connect(str(path))
    depth = make_submission("shortgpt-test")  # one reported claim on drop-25
    width = make_submission("llm-pruner-test", adapter="width", claims=[])
    ingest(engine, depth, make_result(depth))
    ingest(engine, width, make_result(width, losses={"width-25": 0.1}))  # width-50: no quality measured
    yield engine, path
    engine.dispose()


def test_records_are_flat_and_complete(registry):
    engine, _ = registry
    latency, quality = latency_records(engine), quality_records(engine)
    assert len(latency) == 8  # 2 methods x 2 points x 2 scenarios
    assert all(tuple(r) == LATENCY_COLUMNS for r in latency)
    assert all(tuple(r) == QUALITY_COLUMNS for r in quality)
    assert all(not isinstance(v, (dict, list)) for r in latency + quality for v in r.values())
    assert sorted(r["provenance"] for r in quality) == ["measured"] * 3 + ["reported"]


def test_csv_latency_has_provenance_columns_and_one_row_per_measurement(registry):
    _, path = registry
    rows = list(csv.DictReader(io.StringIO(export(path, "--format", "csv"))))
    assert len(rows) == 8
    assert tuple(rows[0]) == LATENCY_COLUMNS
    for column in ("spec_hash", "environment_key", "env_device_name", "env_torch", "env_transformers",
                   "env_prunereg", "env_git_revision", "env_dtype", "env_execution_mode", "p20_ms", "p80_ms"):  # fmt: skip
        assert column in rows[0], column
    first = rows[0]
    assert (first["env_torch"], first["env_git_revision"], first["env_execution_mode"]) == (
        "2.11.0",
        "0123abcd",
        "eager",
    )
    assert float(first["p20_ms"]) < float(first["median_ms"]) < float(first["p80_ms"])
    assert float(first["speedup"]) == pytest.approx(float(first["dense_median_ms"]) / float(first["median_ms"]))
    no_quality = [r for r in rows if r["operating_point"] == "width-50"]
    assert len(no_quality) == 2 and all(r["quality_loss"] == "" and r["quality_provenance"] == "" for r in no_quality)
    measured = next(r for r in rows if r["operating_point"] == "drop-25")
    assert (measured["quality_provenance"], measured["quality_task"]) == ("measured", "heldout-ppl")


def test_csv_quality_table_keeps_reported_claims_apart(registry):
    _, path = registry
    rows = list(csv.DictReader(io.StringIO(export(path, "--format", "csv", "--table", "quality"))))
    assert tuple(rows[0]) == QUALITY_COLUMNS and len(rows) == 4
    (claim,) = [r for r in rows if r["provenance"] == "reported"]
    assert (claim["arxiv"], claim["paper_table"], claim["base_model"], claim["model"]) == (
        "9999.00001v1", "Table 3", "llama-2-7b", "",
    )  # fmt: skip
    assert all(r["model"] == "prunereg-mini" for r in rows if r["provenance"] == "measured")


@pytest.mark.slow
def test_json_round_trips_with_both_tables_and_provenance(registry, tmp_path):
    _, path = registry
    data = json.loads(export(path, "--format", "json"))
    assert set(data) == {"latency", "quality", "reported"}
    assert len(data["latency"]) == 8 and len(data["quality"]) == 4
    assert {r["provenance"] for r in data["quality"]} == {"measured", "reported"}
    assert data["latency"][0]["env_device_name"] == "NVIDIA H200" and data["latency"][0]["env_threads"] == 16
    out = tmp_path / "registry.json"
    export(path, "--format", "json", "--table", "quality", "--out", str(out))
    assert list(json.loads(out.read_text())) == ["quality"]
