"""PostgreSQL: the same registry code by URL. Each test gets a fresh schema (via search_path),
dropped afterwards, so reruns start clean. Skipped unless PRUNEREG_TEST_POSTGRES_URL is set.

Tests that run on both back ends take them from backends.BACKENDS.
"""

from __future__ import annotations

import pytest
from backends import counts, postgres_schema_url
from factories import make_result, make_submission
from sqlalchemy import text

from prunereg.registry import ingest as ingest_module
from prunereg.registry.db import connect
from prunereg.registry.ingest import ingest

pytestmark = pytest.mark.postgres


@pytest.fixture
def pg_engine():
    with postgres_schema_url() as url:
        engine = connect(url)
        yield engine
        engine.dispose()


def test_postgres_ingest_is_idempotent(pg_engine):
    sub = make_submission()
    result = make_result(sub)
    first = ingest(pg_engine, sub, result)
    after_first = counts(pg_engine)
    second = ingest(pg_engine, sub, result)
    assert first.changed and not second.changed
    assert counts(pg_engine) == after_first == {
        "methods": 1, "submissions": 1, "operating_points": 2, "runs": 2,
        "latency_measurements": 4, "quality_results": 3, "failed_measurements": 0,
    }  # fmt: skip


def test_postgres_failure_mid_ingestion_writes_nothing(pg_engine, monkeypatch):
    ingest(pg_engine, make_submission("other-method"))
    before = counts(pg_engine)
    sub = make_submission()
    monkeypatch.setattr(ingest_module, "_store_measured_quality", lambda *a: (_ for _ in ()).throw(OSError("boom")))
    with pytest.raises(OSError):
        ingest(pg_engine, sub, make_result(sub))
    assert counts(pg_engine) == before


def test_postgres_stores_64_bit_counts(pg_engine):
    sub = make_submission()
    result = make_result(sub)
    result = result.model_copy(update={"dense_stats": result.dense_stats.model_copy(update={"parameters": 70 * 10**9})})
    ingest(pg_engine, sub, result)
    with pg_engine.connect() as conn:
        assert conn.execute(text("SELECT max(dense_parameters) FROM runs")).scalar() == 70 * 10**9
