"""A run's natural key gains the digest of what it measured, so conflicting measurements are both kept.

Before, (operating point, model, weights, environment key) was unique and the first results file
ingested won. Existing runs get the digest of their stored rows (the same digest ingestion
computes from a results file, so re-ingesting one adds nothing), and measured quality figures,
one per run, an identity that names the run's digest. Downgrading fails on a registry that holds
two runs differing only by measurement: revision 0002 cannot hold them.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

from prunereg.registry.ingest import MEASURED_LATENCY, MEASURED_RUN, measurement_digest
from prunereg.spec.submission import spec_hash

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

OLD_KEY = ["operating_point_id", "model", "weights", "environment_key"]
OLD_KEY_NAME = "runs_operating_point_id_model_weights_environment_key_key"
"""The name PostgreSQL gave revision 0001's unnamed key."""
NEW_KEY = [*OLD_KEY, "measurement"]
NAMING = {"uq": "uq_%(table_name)s_%(column_0_name)s"}
"""Names SQLite's unnamed unique constraints when a batch rebuilds the table, so the old key can be dropped."""
JSON_COLUMNS = {"gemms", "samples", "gpu_before", "gpu_after"}

runs = sa.table("runs", *(sa.column(c) for c in ("id", "model", "weights", "environment_key", "measurement")),
                *(sa.column(c, sa.JSON() if c in JSON_COLUMNS else None) for c in MEASURED_RUN))  # fmt: skip
latency = sa.table("latency_measurements", sa.column("run_id"),
                   *(sa.column(c, sa.JSON() if c in JSON_COLUMNS else None) for c in MEASURED_LATENCY))  # fmt: skip
quality = sa.table("quality_results", sa.column("id"), sa.column("run_id"), sa.column("identity"),
                   sa.column("task"), sa.column("metric"), sa.column("value", sa.Float()),
                   sa.column("dense_value", sa.Float()), sa.column("higher_is_better", sa.Boolean()),
                   sa.column("tokens"))  # fmt: skip


def upgrade() -> None:
    op.add_column("runs", sa.Column("measurement", sa.String(length=32), nullable=True))
    connection = op.get_bind()
    for run in connection.execute(sa.select(runs)).mappings().all():
        latency_rows = connection.execute(sa.select(latency).where(latency.c.run_id == run["id"])).mappings().all()
        quality_rows = connection.execute(sa.select(quality).where(quality.c.run_id == run["id"])).mappings().all()
        digest = measurement_digest(dict(run), [dict(r) for r in latency_rows], [dict(r) for r in quality_rows])
        connection.execute(sa.update(runs).where(runs.c.id == run["id"]).values(measurement=digest))
        _set_identities(connection, run, quality_rows, digest)
    old_name = _old_key_name(connection)
    with op.batch_alter_table("runs", naming_convention=NAMING) as batch:
        batch.alter_column("measurement", existing_type=sa.String(length=32), nullable=False)
        batch.drop_constraint(old_name, type_="unique")
        batch.create_unique_constraint("runs_natural_key", NEW_KEY)


def downgrade() -> None:
    connection = op.get_bind()
    for run in connection.execute(sa.select(runs)).mappings().all():
        rows = connection.execute(sa.select(quality).where(quality.c.run_id == run["id"])).mappings().all()
        _set_identities(connection, run, rows, None)
    with op.batch_alter_table("runs", naming_convention=NAMING) as batch:
        batch.drop_constraint("runs_natural_key", type_="unique")
        batch.create_unique_constraint(OLD_KEY_NAME, OLD_KEY)
        batch.drop_column("measurement")


def _set_identities(connection, run, quality_rows, digest: str | None) -> None:
    """Measured quality identities naming the run's digest (0003), or without it (0002)."""
    key = [run["model"], run["weights"], run["environment_key"]] + ([digest] if digest else [])
    for row in quality_rows:
        identity = spec_hash({"run": key, "task": row["task"], "metric": row["metric"]})
        connection.execute(sa.update(quality).where(quality.c.id == row["id"]).values(identity=identity))


def _old_key_name(connection) -> str:
    for constraint in sa.inspect(connection).get_unique_constraints("runs"):
        if sorted(constraint["column_names"]) == sorted(OLD_KEY):
            return constraint["name"] or NAMING["uq"] % {"table_name": "runs", "column_0_name": OLD_KEY[0]}
    raise RuntimeError("runs has no unique key on " + ", ".join(OLD_KEY))
