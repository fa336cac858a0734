"""A method names its current submission version, whose quality claims are the method's.

A corrected claim (another base model, a mistyped value) changes the submission's spec hash; results measured
with the earlier version stay valid measurements of it and are ingested with it, and without a current version
its wrong claims would keep counting next to the corrected ones. One nullable column: upgrading sets it to each
method's newest submission (latest `created_at`), the best guess a registry without it allows; `register` or
`evaluate` of the method's file sets it from then on. Downgrading drops it: every version's claims count again.

Revision ID: 0011
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("methods", sa.Column("current_spec_hash", sa.String(64), nullable=True))
    methods = sa.table("methods", sa.column("id"), sa.column("current_spec_hash"))
    submissions = sa.table("submissions", *(sa.column(c) for c in ("id", "method_id", "spec_hash", "created_at")))
    newest = (
        sa.select(submissions.c.spec_hash)
        .where(submissions.c.method_id == methods.c.id)
        .order_by(submissions.c.created_at.desc(), submissions.c.id.desc())
        .limit(1)
        .scalar_subquery()
    )
    op.execute(methods.update().values(current_spec_hash=newest))


def downgrade() -> None:
    with op.batch_alter_table("methods") as batch:  # SQLite: rebuilds the table
        batch.drop_column("current_spec_hash")
