"""Alembic owns the schema: upgrades keep every row, old create_all databases are adopted, and the
head revision matches the ORM exactly, so a model change without a migration fails here.

A registry at an old revision holding data is made by filling one at head through `ingest` and
downgrading it: today's ORM cannot write yesterday's tables, and the downgrade is checked too.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from backends import BACKENDS, backend_url
from factories import claim, default_effects, in_mode, make_environment, make_result, make_submission
from sqlalchemy import func, inspect, select, text
from sqlalchemy.orm import Session

from prunereg.registry.db import (
    BASELINE,
    alembic_config,
    connect,
    current_revision,
    foreign_keys_off,
    upgrade_schema,
    writer,
)
from prunereg.registry.ingest import ingest, ingest_failures
from prunereg.registry.queries import leaderboard_rows
from prunereg.registry.runs import retire
from prunereg.registry.schema import Base, FailedMeasurement, LatencyMeasurement, MethodRecord, QualityRecord, Run
from prunereg.spec.results import CheckpointRecord, WeightFile
from prunereg.spec.uncertainty import noise

HEAD = ScriptDirectory.from_config(alembic_config()).get_current_head()
LATER_TABLES = ("failed_measurements",)
"""Tables created after the baseline (0009): absent below their revision, so left out of `counts`."""


def counts(engine) -> dict[str, int]:
    """Rows per table of the baseline, which every revision has (backends.counts would also read later ones)."""
    with Session(engine) as session:
        return {
            t.name: session.scalars(select(func.count()).select_from(t)).one()
            for t in Base.metadata.sorted_tables
            if t.name not in LATER_TABLES
        }


def fill(engine) -> dict[str, int]:
    """Two methods, each run in an eager and in a graph environment (with GPU readings)."""
    for slug, adapter in [("shortgpt-test", "layer_drop"), ("width-test", "width")]:
        sub = make_submission(slug, adapter=adapter)
        ingest(engine, sub, make_result(sub))
        ingest(engine, sub, in_mode(make_result(sub, environment=make_environment(git_revision="feedbeef")), "graph"))
    return counts(engine)


def downgrade(engine, revision: str) -> None:
    with writer(engine).connect() as connection, foreign_keys_off(connection), connection.begin():
        command.downgrade(alembic_config(connection), revision)


def latency_columns(engine) -> set[str]:
    return {c["name"] for c in inspect(engine).get_columns("latency_measurements")}


def test_one_linear_history_from_the_baseline():
    script = ScriptDirectory.from_config(alembic_config())
    assert len(script.get_heads()) == 1
    assert [r.revision for r in script.walk_revisions()][-1] == BASELINE


@pytest.mark.parametrize("backend", BACKENDS)
def test_upgrade_from_the_baseline_keeps_every_row(backend, tmp_path):
    """0001 -> head: rows, keys and figures survive; a latency's execution is its run's mode (0002)."""
    with backend_url(backend, tmp_path) as url:
        engine = connect(url)
        before = fill(engine)
        rows = leaderboard_rows(engine)
        downgrade(engine, BASELINE)
        assert current_revision(engine) == BASELINE
        assert not latency_columns(engine) & {"execution", "fallback", "gpu_before", "gpu_after"}
        assert counts(engine) == before and before["latency_measurements"] == 16
        upgrade_schema(engine)
        assert current_revision(engine) == HEAD
        assert counts(engine) == before
        upgraded = leaderboard_rows(engine)
        assert upgraded == [
            replace(
                r, gpu_before=None, gpu_after=None, speedup_low=None, speedup_high=None, pareto=False, dominated_by=None,
                excluded=noise(r.speedup, None, None, r.spread),
            )
            for r in rows
        ]  # fmt: skip  # NVML readings are 0002's, intervals 0010's: without them a 5 % spread is too noisy to rank
        assert all(r.excluded and "p80/p20 spread" in r.excluded for r in upgraded)
        assert {(r.execution_mode, r.execution, r.fallback) for r in upgraded} == {
            ("eager", "eager", None), ("graph", "graph", None),
        }  # fmt: skip
        engine.dispose()


@pytest.mark.parametrize("backend", BACKENDS)
def test_0004_adds_the_calibration_record_and_leaves_every_digest(backend, tmp_path):
    """Down to 0003 drops the records, not a run or a digest; up again, every run has none (NULL)."""
    with backend_url(backend, tmp_path) as url:
        engine = connect(url)
        fill(engine)
        calibrated = {"sparsity": 0.25, "selection": "block_influence", "calibration": {"sequences": 4, "length": 64}}
        sub = make_submission("calibrated-test", points={"bi-25": calibrated}, claims=[])
        ingest(engine, sub, make_result(sub))
        runs = select(Run.id, Run.measurement, Run.calibration).order_by(Run.id)
        with engine.connect() as connection:
            before = connection.execute(runs).all()
        assert [r.calibration is not None for r in before].count(True) == 1
        downgrade(engine, "0003")
        assert "calibration" not in {c["name"] for c in inspect(engine).get_columns("runs")}
        upgrade_schema(engine)
        with engine.connect() as connection:
            assert connection.execute(runs).all() == [(i, digest, None) for i, digest, _ in before]
        engine.dispose()


@pytest.mark.parametrize("backend", BACKENDS)
def test_0006_adds_the_checkpoint_record_and_leaves_every_digest(backend, tmp_path):
    """Down to 0005 drops the records, not a run or a digest; up again, every run has none (NULL)."""
    with backend_url(backend, tmp_path) as url:
        engine = connect(url)
        fill(engine)
        declared = {"path": "checkpoints/drop-25", "base": "prunereg-mini", "sparsity": 0.25}
        sub = make_submission(
            "checkpoint-test", adapter="checkpoint", family="static_depth", points={"drop-25": declared},
            effects=default_effects("layer_drop"), claims=[],
        )  # fmt: skip
        record = CheckpointRecord(
            path=declared["path"], base=declared["base"],
            files=[WeightFile(name="model.safetensors", size=4_000_000, sha256="ab" * 32)],
        )  # fmt: skip
        result = make_result(sub)
        points = [p.model_copy(update={"checkpoint": record}) for p in result.points]
        ingest(engine, sub, result.model_copy(update={"points": points}))
        runs = select(Run.id, Run.measurement, Run.checkpoint).order_by(Run.id)
        with engine.connect() as connection:
            before = connection.execute(runs).all()
        assert [r.checkpoint for r in before if r.checkpoint] == [record.model_dump(mode="json")]
        downgrade(engine, "0005")
        assert "checkpoint" not in {c["name"] for c in inspect(engine).get_columns("runs")}
        upgrade_schema(engine)
        with engine.connect() as connection:
            assert connection.execute(runs).all() == [(i, digest, None) for i, digest, _ in before]
        engine.dispose()


@pytest.mark.parametrize("backend", BACKENDS)
def test_0007_turns_finetune_tokens_into_a_recovery_record_and_back(backend, tmp_path):
    """Down to 0006 a claim keeps its recovery tokens as finetune_tokens; up again they are a record whose data
    is 'unstated' (0006 never knew it); one-shot claims stay NULL both ways."""
    recovered = {"data": "Alpaca", "tokens": 50_000_000, "method": "LoRA"}
    claims = [claim("drop-25", 9.0), claim("drop-50", 12.0, recovery=recovered)]
    with backend_url(backend, tmp_path) as url:
        engine = connect(url)
        sub = make_submission("recovered-test", claims=claims)
        ingest(engine, sub)
        downgrade(engine, "0006")
        with engine.connect() as connection:
            old = sorted(connection.execute(text("SELECT value, finetune_tokens FROM quality_results")).all())
        assert old == [(9.0, 0), (12.0, 50_000_000)]
        upgrade_schema(engine)
        rows = select(QualityRecord.value, QualityRecord.recovery, QualityRecord.eval_length).order_by(
            QualityRecord.value
        )
        with engine.connect() as connection:
            assert connection.execute(rows).all() == [
                (9.0, None, None),
                (12.0, {"data": "unstated", "tokens": 50_000_000, "method": ""}, None),
            ]
        engine.dispose()


@pytest.mark.parametrize("backend", BACKENDS)
def test_0008_adds_the_stand_in_and_leaves_every_digest(backend, tmp_path):
    """Down to 0007 drops the stand-in column, not a run or its digest; up again every run has none."""
    with backend_url(backend, tmp_path) as url:
        engine = connect(url)
        fill(engine)
        runs = select(Run.id, Run.measurement).order_by(Run.id)
        with engine.connect() as connection:
            before = connection.execute(runs).all()
        downgrade(engine, "0007")
        assert "stand_in" not in {c["name"] for c in inspect(engine).get_columns("runs")}
        upgrade_schema(engine)
        with engine.connect() as connection:
            assert connection.execute(runs).all() == before
            assert connection.execute(select(Run.stand_in).distinct()).scalars().all() == [None]
        engine.dispose()


@pytest.mark.parametrize("backend", BACKENDS)
def test_0009_adds_the_failed_measurements_table_and_nothing_else(backend, tmp_path):
    """Down to 0008 drops the failures and their table, not a row of another; up again, the table is back, empty."""
    with backend_url(backend, tmp_path) as url:
        engine = connect(url)
        before = fill(engine)
        sub = make_submission("shortgpt-test")
        ingest_failures(engine, sub, [make_failure(sub.adapter.operating_points[0].name)])
        with Session(engine) as session:
            assert session.scalars(select(func.count()).select_from(FailedMeasurement)).one() == 1
        downgrade(engine, "0008")
        assert "failed_measurements" not in inspect(engine).get_table_names()
        assert counts(engine) == before
        upgrade_schema(engine)
        with Session(engine) as session:
            assert session.scalars(select(func.count()).select_from(FailedMeasurement)).one() == 0
        assert counts(engine) == before
        engine.dispose()


@pytest.mark.parametrize("backend", BACKENDS)
def test_0010_adds_intervals_and_retirements_and_leaves_every_digest(backend, tmp_path):
    """Down to 0009 drops the dense samples, intervals, timing records and retirements, not a run or a digest; up
    again, every latency has no interval (NULL) and no run is retired, until the same results come again."""
    with backend_url(backend, tmp_path) as url:
        engine = connect(url)
        before = fill(engine)
        retire(engine, 1, "timed on a busy machine")
        runs = select(Run.id, Run.measurement).order_by(Run.id)
        with engine.connect() as connection:
            digests = connection.execute(runs).all()
        downgrade(engine, "0009")
        assert not latency_columns(engine) & {"dense_samples", "speedup_low", "speedup_high", "timing"}
        assert not {c["name"] for c in inspect(engine).get_columns("runs")} & {"retired_at", "retired_why"}
        assert counts(engine) == before
        upgrade_schema(engine)
        with engine.connect() as connection:
            assert connection.execute(runs).all() == digests
            assert connection.execute(select(Run.retired_at, Run.retired_why).distinct()).all() == [(None, None)]
            intervals = select(LatencyMeasurement.dense_samples, LatencyMeasurement.speedup_low)
            assert set(connection.execute(intervals).all()) == {(None, None)}
        sub = make_submission("shortgpt-test")
        ingest(engine, sub, make_result(sub))  # the same measurement brings its dense samples back
        assert counts(engine) == before
        with Session(engine) as session:
            filled = session.scalars(select(LatencyMeasurement).join(LatencyMeasurement.run).where(Run.id == 1)).all()
        assert filled and all(lat.speedup_low is not None for lat in filled)
        engine.dispose()


@pytest.mark.parametrize("backend", BACKENDS)
def test_0011_makes_each_methods_newest_version_current(backend, tmp_path):
    """Down to 0010 drops the current version; up again, each method's newest submission is its current one (the
    registry kept no better record), not a row of another table changed."""
    with backend_url(backend, tmp_path) as url:
        engine = connect(url)
        fill(engine)
        newer = make_submission("shortgpt-test", claims=[claim("drop-25", 6.0)])
        ingest(engine, newer, update_method=False)  # a results file's version: not made current
        current = select(MethodRecord.slug, MethodRecord.current_spec_hash).order_by(MethodRecord.slug)
        with engine.connect() as connection:
            assert connection.execute(current).all() == [
                ("shortgpt-test", make_submission("shortgpt-test").spec_hash()),
                ("width-test", make_submission("width-test", adapter="width").spec_hash()),
            ]
        before = counts(engine)
        downgrade(engine, "0010")
        assert "current_spec_hash" not in {c["name"] for c in inspect(engine).get_columns("methods")}
        upgrade_schema(engine)
        assert counts(engine) == before
        with engine.connect() as connection:
            assert connection.execute(current).all() == [
                ("shortgpt-test", newer.spec_hash()),
                ("width-test", make_submission("width-test", adapter="width").spec_hash()),
            ]
        engine.dispose()


def make_failure(point: str):
    from prunereg.spec.catalog import suites
    from prunereg.spec.sweep import MeasurementFailure

    return MeasurementFailure(
        operating_point=point, model="prunereg-mini", device="cpu", device_name="test CPU", dtype="float32",
        execution_mode="eager", scenario=suites()["ci"][0], stage="loading the model", kind="error",
        reason="RuntimeError: boom", attempt="0" * 32,
    )  # fmt: skip


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_create_all_database_is_stamped_then_upgraded(backend, tmp_path):
    with backend_url(backend, tmp_path) as url:
        legacy = connect(url)
        before = fill(legacy)
        downgrade(legacy, BASELINE)  # revision 0001 is exactly what create_all made before migrations
        with legacy.begin() as connection:
            connection.execute(text("DROP TABLE alembic_version"))
        legacy.dispose()
        engine = connect(url)
        assert current_revision(engine) == HEAD
        assert counts(engine) == before
        sub = make_submission("shortgpt-test")
        ingest(engine, sub, make_result(sub))  # whole in 0001 (no NVML readings), so the same measurement
        assert counts(engine) == before  # re-ingesting adds nothing: keys, digests and constraints survived
        engine.dispose()


@pytest.mark.parametrize("backend", BACKENDS)
def test_head_matches_the_orm(backend, tmp_path):
    """`alembic check`: autogenerate finds nothing to do, so no schema change can skip a migration."""
    with backend_url(backend, tmp_path) as url:
        engine = connect(url)
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
            inspector = inspect(connection)
            names = {i["name"] for t in ("submissions", "runs", "quality_results") for i in inspector.get_indexes(t)}
        assert {"ix_submissions_method_id", "ix_runs_environment_key", "ix_quality_results_run_id"} <= names
        engine.dispose()


def test_migrations_ship_with_the_package():
    from pathlib import Path

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    from prunereg.registry.db import MIGRATIONS

    setuptools = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["tool"]["setuptools"]
    files = [p for p in MIGRATIONS.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    assert any(p.name.startswith("0004") for p in files)
    for file in files:  # a module of a listed package, or data that package lists
        package = ".".join(["prunereg.registry", *file.parent.relative_to(MIGRATIONS.parent).parts])
        assert package in setuptools["packages"], file
        patterns = setuptools["package-data"].get(package, [])
        assert file.suffix == ".py" or any(file.match(pattern) for pattern in patterns), file
