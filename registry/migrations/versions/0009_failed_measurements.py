"""Failed measurements: what `prunereg sweep` could not measure, per operating point and scenario, and why.

A new table only; no existing row changes. Downgrading drops the records.

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

INT = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
"""The ORM's int: 64 bits, plain INTEGER on SQLite so that ids stay rowids."""


def upgrade() -> None:
    op.create_table(
        "failed_measurements",
        sa.Column("id", INT, nullable=False),
        sa.Column("operating_point_id", INT, nullable=False),
        sa.Column("attempt", sa.String(length=32), nullable=False),
        sa.Column("model", sa.String(length=300), nullable=False),
        sa.Column("weights", sa.String(length=16), nullable=True),
        sa.Column("environment_key", sa.String(length=32), nullable=True),
        sa.Column("environment", sa.JSON(), nullable=True),
        sa.Column("device", sa.String(length=8), nullable=False),
        sa.Column("device_name", sa.String(length=300), nullable=False),
        sa.Column("dtype", sa.String(length=16), nullable=False),
        sa.Column("execution_mode", sa.String(length=16), nullable=False),
        sa.Column("scenario", sa.String(length=64), nullable=False),
        sa.Column("phase", sa.String(length=16), nullable=False),
        sa.Column("batch_size", INT, nullable=False),
        sa.Column("seq_len", INT, nullable=False),
        sa.Column("stage", sa.String(length=300), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("reason", sa.String(length=1000), nullable=False),
        sa.Column("node", sa.String(length=300), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["operating_point_id"], ["operating_points.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("operating_point_id", "scenario", "attempt"),
    )
    op.create_index(op.f("ix_failed_measurements_operating_point_id"), "failed_measurements", ["operating_point_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_failed_measurements_operating_point_id"), table_name="failed_measurements")
    op.drop_table("failed_measurements")
