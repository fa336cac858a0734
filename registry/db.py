"""Where the registry lives: one SQLite file by default, any SQLAlchemy URL (PostgreSQL) for a shared one.

Alembic owns the schema: `connect` brings the database to the newest migration, so every
prunereg version finds the tables it expects, and a schema change is always a reviewed revision.
"""

from __future__ import annotations

import os
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, event, inspect, text

DEFAULT_DB = "prunereg.db"
DB_ENV = "PRUNEREG_DB"
MIGRATIONS = Path(__file__).parent / "migrations"
BASELINE = "0001"
"""The revision that creates the tables as prunereg's create_all made them before migrations."""
BUSY_TIMEOUT_MS = 60_000
_WRITER = "prunereg_writer"
_LOCK_KEY = 0x70727567  # any constant: serializes concurrent upgrades of one PostgreSQL database


def resolve_url(db: str | None = None) -> str:
    """`db` is a SQLAlchemy URL if it holds '://', else a SQLite file path; None reads $PRUNEREG_DB."""
    if db is None:
        db = os.environ.get(DB_ENV) or DEFAULT_DB
    if "://" in db:
        return db
    return f"sqlite:///{Path(db).expanduser()}"


def _sqlite_connect(dbapi_connection, _record) -> None:
    """Foreign keys on; WAL so readers never block the writer; wait for the write lock, don't fail.

    pysqlite's own transaction handling is switched off (it would not BEGIN before DDL), and
    `_sqlite_begin` issues BEGIN itself.
    """
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.close()


def _sqlite_begin(connection: Connection) -> None:
    """Writers (`writer(engine)`) take the write lock at BEGIN: in WAL mode a deferred transaction
    that read first fails at once when another writer committed meanwhile; this one waits instead.
    Readers begin deferred and never wait for writers."""
    immediate = connection.get_execution_options().get(_WRITER, False)
    connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def writer(engine: Engine) -> Engine:
    """The engine for a read-then-write transaction (ingestion, migrations); the same engine elsewhere."""
    return engine.execution_options(**{_WRITER: True})


def connect(db: str | None = None, *, upgrade: bool = True) -> Engine:
    """An engine on the registry, its schema brought to the newest migration (`upgrade=False`: as is)."""
    engine = create_engine(resolve_url(db))
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_connect)
        event.listen(engine, "begin", _sqlite_begin)
    if upgrade:
        upgrade_schema(engine)
    return engine


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic configured in code (no alembic.ini), so migrations run from an installed package."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def upgrade_schema(engine: Engine, revision: str = "head") -> None:
    """Migrate to `revision` in one locked transaction, so concurrent first connects do it once.

    A database with prunereg's tables but no `alembic_version` was made by create_all before
    migrations existed; its tables are exactly revision 0001's, so it is stamped 0001 (not
    re-created) and then upgraded like any other.
    """
    with writer(engine).begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
        config = alembic_config(connection)
        tables = inspect(connection).get_table_names()
        if "methods" in tables and "alembic_version" not in tables:
            command.stamp(config, BASELINE)
        command.upgrade(config, revision)


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()
