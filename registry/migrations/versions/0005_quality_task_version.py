"""A quality figure records its task's version and, for question-answering tasks, the examples scored.

Two nullable columns: every existing figure is the held-out cross-entropy or a claim, written
before tasks had versions, so both are SQL NULL there, and the measurement digest, which names
a task version, shots, examples or harness only where a results file has one, stays what it is.
Downgrading drops them; stored digests are left as they are.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("quality_results", sa.Column("task_version", sa.String(length=16), nullable=True))
    op.add_column(
        "quality_results", sa.Column("examples", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True)
    )


def downgrade() -> None:
    with op.batch_alter_table("quality_results") as batch:  # SQLite: rebuilds the table
        batch.drop_column("examples")
        batch.drop_column("task_version")
