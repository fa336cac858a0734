"""Where the registry lives: one SQLite file by default, any SQLAlchemy URL for a shared one."""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy import Engine, create_engine, event

from .schema import Base

DEFAULT_DB = "prunereg.db"
DB_ENV = "PRUNEREG_DB"


def resolve_url(db: str | None = None) -> str:
    """`db` is a SQLAlchemy URL if it holds '://', else a SQLite file path; None reads $PRUNEREG_DB."""
    if db is None:
        db = os.environ.get(DB_ENV) or DEFAULT_DB
    if "://" in db:
        return db
    return f"sqlite:///{Path(db).expanduser()}"


def _sqlite_foreign_keys(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def connect(db: str | None = None) -> Engine:
    """An engine on the registry, with its tables created if they are missing."""
    engine = create_engine(resolve_url(db))
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_foreign_keys)
    # Schema changes will go through Alembic migrations (later issue); until then create_all.
    Base.metadata.create_all(engine)
    return engine
