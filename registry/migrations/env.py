"""Alembic environment: runs on the connection `prunereg.registry.db` hands over, online only."""

from alembic import context

from prunereg.registry.schema import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through prunereg (`prunereg db upgrade`), which supplies the connection")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    compare_type=True,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
