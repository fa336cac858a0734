"""The registry's state, compared before and after a refused ingestion: every row, and SQLite's bytes."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import create_engine, select

from prunereg.registry.schema import Base


def dump(url: str, *, content_only: bool = False) -> dict[str, list[tuple]]:
    """Every row of every table; `content_only`: without ids and timestamps, which ingestion order may change."""
    engine, tables = create_engine(url), {}
    with engine.connect() as connection:
        for table in Base.metadata.sorted_tables:
            columns = [c for c in table.columns if not (c.primary_key or c.foreign_keys or c.name == "created_at")]
            rows = connection.execute(select(*columns) if content_only else select(table).order_by(table.c.id))
            tables[table.name] = sorted(tuple(map(repr, r)) for r in rows) if content_only else list(map(tuple, rows))
    engine.dispose()
    return tables


def sqlite_bytes(url: str) -> bytes | None:
    if not url.startswith("sqlite:///"):
        return None
    engine = create_engine(url)
    with engine.connect() as connection:
        connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    engine.dispose()
    return Path(url.removeprefix("sqlite:///")).read_bytes()
