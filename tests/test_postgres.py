"""PostgreSQL: the same registry code by URL. Each test gets a fresh schema (via search_path),
dropped afterwards, so reruns start clean. Skipped unless PRUNEREG_TEST_POSTGRES_URL is set.

`backend_url` is also imported by the migration and concurrency tests to run on both back ends.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from conftest import make_result, make_submission
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.orm import Session

from prunereg.registry import ingest as ingest_module
from prunereg.registry.db import connect
from prunereg.registry.ingest import ingest
from prunereg.registry.schema import Base

POSTGRES_ENV = "PRUNEREG_TEST_POSTGRES_URL"
BACKENDS = ["sqlite", "postgresql"]


@contextmanager
def postgres_schema_url() -> Iterator[str]:
    """A URL whose connections see only a new, empty schema, dropped on exit."""
    base = os.environ.get(POSTGRES_ENV)
    if not base:
        pytest.skip(f"{POSTGRES_ENV} is not set (e.g. postgresql+psycopg://postgres@127.0.0.1:5432/test)")
    schema = f"prunereg_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    separator = "&" if "?" in base else "?"
    try:
        yield f"{base}{separator}options=-csearch_path%3D{schema}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@contextmanager
def backend_url(backend: str, tmp_path) -> Iterator[str]:
    if backend == "postgresql":
        with postgres_schema_url() as url:
            yield url
    else:
        yield f"sqlite:///{tmp_path / 'registry.db'}"


def counts(engine) -> dict[str, int]:
    with Session(engine) as session:
        return {t.name: session.scalar(select(func.count()).select_from(t)) for t in Base.metadata.sorted_tables}


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
        "latency_measurements": 4, "quality_results": 3,
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
