"""The registry's two back ends for parametrized tests: SQLite in tmp_path, and PostgreSQL in a throwaway
schema when PRUNEREG_TEST_POSTGRES_URL is set (skipped otherwise)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.orm import Session

from prunereg.registry.schema import Base

POSTGRES_ENV = "PRUNEREG_TEST_POSTGRES_URL"
BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


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
        return {t.name: session.scalars(select(func.count()).select_from(t)).one() for t in Base.metadata.sorted_tables}
