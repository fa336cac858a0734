"""A run records the checkpoint its point loaded (adapter `checkpoint`): folder, base and each weights file's sha256.

A nullable JSON column: every existing run pruned a catalog model with a built-in adapter, so it
has none (SQL NULL), and its measurement digest, which names a checkpoint record only where there
is one, stays what it is. Downgrading drops the records; stored digests are left as they are.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("runs", sa.Column("checkpoint", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:  # SQLite: rebuilds the table
        batch.drop_column("checkpoint")
