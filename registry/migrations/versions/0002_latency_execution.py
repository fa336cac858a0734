"""How each latency really ran: execution mode, fallback reason, GPU state before and after.

Existing rows get their run's execution mode (no fallback was ever recorded before this
revision, so a scenario ran in its environment's mode); the server default 'eager' only fills
the new NOT NULL column first and matches the results contract's default.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

COLUMNS = ("execution", "fallback", "gpu_before", "gpu_after")


def upgrade() -> None:
    op.add_column(
        "latency_measurements", sa.Column("execution", sa.String(length=16), server_default="eager", nullable=False)
    )
    op.add_column("latency_measurements", sa.Column("fallback", sa.String(length=300), nullable=True))
    op.add_column("latency_measurements", sa.Column("gpu_before", sa.JSON(), nullable=True))
    op.add_column("latency_measurements", sa.Column("gpu_after", sa.JSON(), nullable=True))
    op.execute(
        "UPDATE latency_measurements SET execution = "
        "(SELECT runs.execution_mode FROM runs WHERE runs.id = latency_measurements.run_id)"
    )


def downgrade() -> None:
    with op.batch_alter_table("latency_measurements") as batch:  # SQLite: rebuilds the table
        for column in reversed(COLUMNS):
            batch.drop_column(column)
