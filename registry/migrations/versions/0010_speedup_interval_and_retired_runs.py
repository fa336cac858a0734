"""A latency keeps its dense samples, the speedup interval ingestion computes from them and how it was timed;
a run can be retired (hidden from fronts, bands and exports) with its time and reason.

Nullable columns only. A latency stored before has no dense samples, so no interval (NULL): it is ranked by
its spread as before (spec.uncertainty.noise). No run is retired. No key or measurement digest changes: the
dense samples are not part of the digest (the dense median, which they give, already is). Downgrading drops
the columns: the intervals, the timing records and the retirements with their reasons.

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

LATENCY = ("dense_samples", "speedup_low", "speedup_high", "timing")
RUNS = ("retired_at", "retired_why")


def upgrade() -> None:
    op.add_column("latency_measurements", sa.Column("dense_samples", sa.JSON(), nullable=True))
    op.add_column("latency_measurements", sa.Column("speedup_low", sa.Double(), nullable=True))
    op.add_column("latency_measurements", sa.Column("speedup_high", sa.Double(), nullable=True))
    op.add_column("latency_measurements", sa.Column("timing", sa.JSON(), nullable=True))
    op.add_column("runs", sa.Column("retired_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("runs", sa.Column("retired_why", sa.String(300), nullable=True))


def downgrade() -> None:
    for table, columns in (("latency_measurements", LATENCY), ("runs", RUNS)):
        with op.batch_alter_table(table) as batch:  # SQLite: rebuilds the table
            for column in columns:
                batch.drop_column(column)
