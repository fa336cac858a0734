"""Where the registry lives: one SQLite file by default, any SQLAlchemy URL (PostgreSQL) for a shared one.

Alembic owns the schema: `connect` brings the database to the newest migration, so every
prunereg version finds the tables it expects, and a schema change is always a reviewed revision.
A registry that cannot be opened (no such driver, no server, a folder that is missing or not
writable, a file that is no database) raises `RegistryUnavailable` with one line naming it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, event, inspect, make_url, text
from sqlalchemy.exc import ArgumentError, DBAPIError, SQLAlchemyError

DEFAULT_DB = "prunereg.db"
DB_ENV = "PRUNEREG_DB"
MIGRATIONS = Path(__file__).parent / "migrations"
BASELINE = "0001"
"""The revision that creates the tables as prunereg's create_all made them before migrations."""
BUSY_TIMEOUT_MS = 60_000
_WRITER = "prunereg_writer"
_LOCK_KEY = 0x70727567  # any constant: serializes concurrent upgrades of one PostgreSQL database


class RegistryUnavailable(Exception):
    """The registry named by --db / $PRUNEREG_DB cannot be opened or brought up to date."""


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


def display_url(url: str) -> str:
    """The URL as safe to print: a password never shows."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def _reason(err: SQLAlchemyError) -> str:
    """The driver's own first line (e.g. 'Connection refused'), without SQLAlchemy's wrapping and links."""
    text = str(err.orig) if isinstance(err, DBAPIError) else str(err)
    line = (text.strip().splitlines() or [type(err).__name__])[0]
    if "unable to open database file" in line:
        line += " (does its folder exist, and may this user write there?)"
    return line


def connect(db: str | None = None, *, upgrade: bool = True) -> Engine:
    """An engine on the registry, its schema brought to the newest migration (`upgrade=False`: as is)."""
    url = resolve_url(db)
    try:
        engine = create_engine(url)
    except ArgumentError as err:
        raise RegistryUnavailable(f"'{display_url(url)}' is not a SQLite file or a database URL: {err}") from None
    except ImportError as err:
        raise RegistryUnavailable(f"no driver for the registry {display_url(url)}: {err}") from None
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_connect)
        event.listen(engine, "begin", _sqlite_begin)
    if upgrade:
        try:
            upgrade_schema(engine)
        except SQLAlchemyError as err:
            engine.dispose()
            raise RegistryUnavailable(f"cannot open the registry {display_url(url)}: {_reason(err)}") from None
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
    with writer(engine).connect() as connection, foreign_keys_off(connection), connection.begin():
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
        config = alembic_config(connection)
        tables = inspect(connection).get_table_names()
        if "methods" in tables and "alembic_version" not in tables:
            command.stamp(config, BASELINE)
        command.upgrade(config, revision)
        if connection.dialect.name == "sqlite" and connection.exec_driver_sql("PRAGMA foreign_key_check").first():
            raise RuntimeError("a migration left rows whose parent is gone; nothing was changed")


@contextmanager
def foreign_keys_off(connection: Connection) -> Iterator[None]:
    """SQLite rebuilds a table to change its constraints (Alembic's batch mode); dropping the old
    table with foreign keys on would delete every child row through ON DELETE CASCADE. The pragma
    only takes effect outside a transaction, so it is set on the DBAPI connection before BEGIN."""
    if connection.dialect.name != "sqlite":
        yield
        return
    dbapi = connection.connection.driver_connection
    assert dbapi is not None, "a pooled connection always has its DBAPI connection"
    dbapi.execute("PRAGMA foreign_keys=OFF")
    try:
        yield
    finally:
        dbapi.execute("PRAGMA foreign_keys=ON")


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()
