"""Re-measure and retire: `evaluate --remeasure` adds a run beside the old ones, `runs retire` hides one from every
ranking and export with its reason, which the method page shows. Nothing is deleted."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from backends import counts
from factories import in_mode, make_result, make_submission
from sqlalchemy import select
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from prunereg.cli import app
from prunereg.leaderboard.build import build_site
from prunereg.registry.analysis import scenario_analysis
from prunereg.registry.db import connect
from prunereg.registry.export import export_json, latency_records, quality_records
from prunereg.registry.ingest import ingest
from prunereg.registry.queries import leaderboard_rows, method_detail, stored_points
from prunereg.registry.runs import RetireError, retire, run_summaries
from prunereg.registry.schema import LatencyMeasurement

ROOT = Path(__file__).resolve().parents[1]
WHY = "timed while another job loaded the machine"


@pytest.fixture
def db(tmp_path) -> str:
    """Two runs of each point: an eager one, and a faster graph-mode one in its own environment."""
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    engine = connect(url)
    sub = make_submission()
    ingest(engine, sub, make_result(sub))
    ingest(engine, sub, in_mode(make_result(sub, speedups={"drop-25": 1.5, "drop-50": 2.0}), "graph"))
    engine.dispose()
    return url


def cli(*args: str):
    return CliRunner().invoke(app, list(args))


def graph_run(engine, point: str = "drop-50") -> int:
    (run,) = [r for r in run_summaries(engine) if r.operating_point == point and r.execution_mode == "graph"]
    return run.id


def test_runs_list_shows_every_run_with_its_id(db):
    result = cli("runs", "list", "--db", db)
    assert result.exit_code == 0, result.output
    ids = [r.id for r in run_summaries(connect(db))]
    assert len(ids) == 4
    for run in ids:
        assert re.search(rf"^│\s+{run}\s+│ shortgpt-test", result.output, re.M), result.output
    assert cli("runs", "list", "--method", "nothing", "--db", db).exit_code == 1


def test_a_retired_run_leaves_the_front_bands_and_exports_but_not_the_registry(db, tmp_path):
    engine = connect(db)
    before = counts(engine)
    run = graph_run(engine)
    on_front = [r for r in leaderboard_rows(engine) if r.run_id == run]
    assert on_front and all(r.pareto for r in on_front)
    env = on_front[0].environment_key

    def its_quality():
        return [q for q in quality_records(engine) if q["environment_key"] == env and q["operating_point"] == "drop-50"]

    assert its_quality()

    result = cli("runs", "retire", str(run), "--why", WHY, "--db", db)
    assert result.exit_code == 0, result.output
    assert f"retired run {run} (shortgpt-test · drop-50" in result.output

    assert counts(engine) == before  # nothing deleted
    assert all(r.run_id != run for r in leaderboard_rows(engine))
    for analysis in scenario_analysis(engine, "decode", 1):
        assert all(r.run_id != run for r in analysis.rows)
        assert all(b.speedup != 2.0 for b in analysis.bands)
    assert all(r["run_id"] != run for r in latency_records(engine))
    assert its_quality() == []
    assert f'"run_id": {run},' not in export_json(engine)
    scenarios = [r.scenario for r in on_front]
    stored = stored_points(engine, on_front[0].spec_hash, "prunereg-mini", "trained", env, scenarios)
    assert stored == {"drop-25"}  # drop-50's only run here is retired: the next evaluate measures it again

    (point,) = [p for s in method_detail(engine, "shortgpt-test").submissions for p in s.points if p.name == "drop-50"]
    assert [r.id for r in point.retired] == [run] and point.retired[0].retired_why == WHY
    assert run not in [r.id for r in point.runs]
    page = (build_site(engine, tmp_path / "site").parent / "methods" / "shortgpt-test.html").read_text()
    retired = page[page.index("<h4>Retired runs</h4>") :]
    assert WHY in retired and f'<td class="num">{run}</td><td>drop-50</td>' in retired


def test_retiring_twice_or_an_unknown_run_is_one_line_and_exit_1(db):
    engine = connect(db)
    run = graph_run(engine)
    assert cli("runs", "retire", str(run), "--why", WHY, "--db", db).exit_code == 0
    again = cli("runs", "retire", str(run), "--why", "again", "--db", db)
    assert again.exit_code == 1 and isinstance(again.exception, SystemExit)
    (line,) = again.stderr.splitlines()
    assert line.startswith(f"error: run {run} is already retired (") and line.endswith(f"UTC: {WHY})")
    unknown = cli("runs", "retire", "999", "--why", WHY, "--db", db)
    assert unknown.exit_code == 1
    assert unknown.stderr.splitlines() == ["error: no run 999 in the registry (`prunereg runs list` shows their ids)"]
    assert [r.retired_why for r in run_summaries(engine) if r.retired_at] == [WHY]


@pytest.mark.parametrize("why", ["", "   ", "x" * 301])
def test_a_retirement_needs_a_one_line_reason(db, why):
    engine = connect(db)
    with pytest.raises(RetireError):
        retire(engine, graph_run(engine), why)
    assert not any(r.retired_at for r in run_summaries(engine))


def test_a_retirement_survives_the_same_results_ingested_again(db):
    """The same measurement is the same run: ingesting it again neither duplicates nor revives it."""
    engine = connect(db)
    run = graph_run(engine)
    retire(engine, run, WHY)
    sub = make_submission()
    summary = ingest(engine, sub, in_mode(make_result(sub, speedups={"drop-25": 1.5, "drop-50": 2.0}), "graph"))
    assert not summary.changed
    assert all(r.run_id != run for r in leaderboard_rows(engine))


@pytest.mark.slow
def test_remeasure_adds_a_run_beside_the_old_one(tmp_path):
    """A rerun skips a stored point; with --remeasure it is measured again and stored as a second run."""
    db = str(tmp_path / "registry.db")
    command = ["evaluate", str(ROOT / "submissions" / "dense.json"), "--repeats", "3", "--max-repeats", "3",
               "--warmup", "0", "--task", "heldout-ppl", "--db", db]  # fmt: skip
    first = cli(*command)
    assert first.exit_code == 0, first.output
    again = cli(*command)
    assert again.exit_code == 0 and "already in the registry, not measured again: dense" in again.output
    engine = connect(f"sqlite:///{db}")
    assert len(run_summaries(engine)) == 1
    remeasured = cli(*command, "--remeasure")
    assert remeasured.exit_code == 0, remeasured.output
    assert "already in the registry" not in remeasured.output
    runs = run_summaries(engine)
    assert len(runs) == 2 and runs[0].environment_key == runs[1].environment_key
    assert {r.run_id for r in leaderboard_rows(engine)} == {r.id for r in runs}
    with Session(engine) as session:
        stored = session.scalars(select(LatencyMeasurement.timing)).all()
    assert stored and all(t["repeats"] == 3 and t["added_repeats"] == 0 and t["threads"] >= 1 for t in stored)
