"""A run records the calibration its point's selection ran on and how long calibrating and pruning took.

A nullable JSON column: every existing run was measured before any selection calibrated, so it
has none (SQL NULL), and its measurement digest, which names a calibration record only where there
is one, stays what it is. Downgrading drops the records; stored digests are left as they are.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("runs", sa.Column("calibration", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:  # SQLite: rebuilds the table
        batch.drop_column("calibration")
