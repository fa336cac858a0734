"""A claim keeps what makes it comparable: evaluation length, averaged tasks, recovery, calibration, the row as printed.

`finetune_tokens` (0 = no recovery) becomes `recovery`, a JSON record of the training after pruning
(data, tokens, how) or SQL NULL for one-shot pruning; a row with tokens but no record of their data
says "unstated". Downgrading keeps only the tokens of each recovery.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

INT = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # what the ORM maps an int to (0001's INT)
quality = sa.table(
    "quality_results",
    sa.column("id", sa.Integer),
    sa.column("finetune_tokens", sa.Integer),
    sa.column("recovery", sa.JSON(none_as_null=True)),
)


def upgrade() -> None:
    with op.batch_alter_table("quality_results") as batch:
        batch.add_column(sa.Column("eval_length", INT, nullable=True))
        batch.add_column(sa.Column("tasks_averaged", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("recovery", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("calibration", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("paper_row", sa.String(400), nullable=True))
    connection = op.get_bind()
    rows = connection.execute(sa.select(quality.c.id, quality.c.finetune_tokens))
    for row_id, tokens in rows.all():
        if tokens:
            connection.execute(
                sa.update(quality)
                .where(quality.c.id == row_id)
                .values(recovery={"data": "unstated", "tokens": tokens, "method": ""})
            )
    with op.batch_alter_table("quality_results") as batch:
        batch.drop_column("finetune_tokens")


def downgrade() -> None:
    with op.batch_alter_table("quality_results") as batch:
        batch.add_column(sa.Column("finetune_tokens", INT, nullable=False, server_default="0"))
    connection = op.get_bind()
    rows = connection.execute(sa.select(quality.c.id, quality.c.recovery))
    for row_id, recovery in rows.all():
        if recovery and recovery.get("tokens"):
            connection.execute(
                sa.update(quality).where(quality.c.id == row_id).values(finetune_tokens=recovery["tokens"])
            )
    with op.batch_alter_table("quality_results") as batch:
        for column in ("paper_row", "calibration", "recovery", "tasks_averaged", "eval_length"):
            batch.drop_column(column)
