"""A run records the shape stand-in selection that pruned a random-weight model in place of the point's own.

A nullable column: every run stored so far ran its point's own selection (SQL NULL), and the measurement
digest names a stand-in only where there is one, so stored digests stay what they are.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("runs", sa.Column("stand_in", sa.String(40), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:  # SQLite: rebuilds the table
        batch.drop_column("stand_in")
