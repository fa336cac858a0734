"""Alembic owns the schema: upgrades keep every row, old create_all databases are adopted, and the
head revision matches the ORM exactly, so a model change without a migration fails here."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from conftest import make_environment, make_result, make_submission
from sqlalchemy import inspect
from test_postgres import BACKENDS, backend_url, counts

from prunereg.registry.db import BASELINE, alembic_config, connect, current_revision, upgrade_schema
from prunereg.registry.ingest import ingest
from prunereg.registry.queries import leaderboard_rows
from prunereg.registry.schema import Base

HEAD = ScriptDirectory.from_config(alembic_config()).get_current_head()


def fill(engine) -> dict[str, int]:
    for slug, adapter in [("shortgpt-test", "layer_drop"), ("width-test", "width")]:
        sub = make_submission(slug, adapter=adapter)
        ingest(engine, sub, make_result(sub))
        ingest(engine, sub, make_result(sub, environment=make_environment(git_revision="feedbeef")))
    return counts(engine)


def test_one_linear_history_from_the_baseline():
    script = ScriptDirectory.from_config(alembic_config())
    assert len(script.get_heads()) == 1
    assert [r.revision for r in script.walk_revisions()][-1] == BASELINE


@pytest.mark.parametrize("backend", BACKENDS)
def test_upgrade_from_the_baseline_keeps_every_row(backend, tmp_path):
    with backend_url(backend, tmp_path) as url:
        engine = connect(url, upgrade=False)
        upgrade_schema(engine, BASELINE)
        assert current_revision(engine) == BASELINE
        before = fill(engine)
        rows = leaderboard_rows(engine)
        upgrade_schema(engine)
        assert current_revision(engine) == HEAD
        assert counts(engine) == before and before["latency_measurements"] == 16
        assert leaderboard_rows(engine) == rows
        engine.dispose()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_create_all_database_is_stamped_then_upgraded(backend, tmp_path):
    with backend_url(backend, tmp_path) as url:
        legacy = connect(url, upgrade=False)
        Base.metadata.create_all(legacy)  # what prunereg did before migrations
        before = fill(legacy)
        legacy.dispose()
        engine = connect(url)
        assert current_revision(engine) == HEAD
        assert counts(engine) == before
        assert fill(engine) == before  # re-ingesting adds nothing: keys and constraints survived
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

    data = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    patterns = data["tool"]["setuptools"]["package-data"]["prunereg.registry"]
    shipped = {p for pattern in patterns for p in MIGRATIONS.parent.glob(pattern)}
    files = {p for p in MIGRATIONS.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    assert files and files <= shipped
