"""The tables of prunereg 0.1 exactly as its create_all made them, constraints and indexes included.

Databases made before migrations existed are stamped at this revision, not re-created
(`prunereg.registry.db.upgrade_schema`), so it must never change.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

INT = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
"""The ORM's int: 64 bits, plain INTEGER on SQLite so that ids stay rowids."""


def upgrade() -> None:
    op.create_table(
        "methods",
        sa.Column("id", INT, nullable=False),
        sa.Column("slug", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=120), nullable=False),
        sa.Column("family", sa.String(length=32), nullable=False),
        sa.Column("authors", sa.JSON(), nullable=False),
        sa.Column("paper_title", sa.String(length=300), nullable=False),
        sa.Column("arxiv", sa.String(length=16), nullable=True),
        sa.Column("url", sa.String(length=300), nullable=True),
        sa.Column("venue", sa.String(length=100), nullable=True),
        sa.Column("year", INT, nullable=False),
        sa.Column("license", sa.String(length=64), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("slug"),
    )
    op.create_table(
        "submissions",
        sa.Column("id", INT, nullable=False),
        sa.Column("method_id", INT, nullable=False),
        sa.Column("spec_hash", sa.String(length=64), nullable=False),
        sa.Column("schema_version", INT, nullable=False),
        sa.Column("spec", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["method_id"], ["methods.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("spec_hash"),
    )
    op.create_index(op.f("ix_submissions_method_id"), "submissions", ["method_id"])
    op.create_table(
        "operating_points",
        sa.Column("id", INT, nullable=False),
        sa.Column("submission_id", INT, nullable=False),
        sa.Column("name", sa.String(length=40), nullable=False),
        sa.Column("description", sa.String(length=300), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["submission_id"], ["submissions.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("submission_id", "name"),
    )
    op.create_table(
        "runs",
        sa.Column("id", INT, nullable=False),
        sa.Column("operating_point_id", INT, nullable=False),
        sa.Column("environment_key", sa.String(length=32), nullable=False),
        sa.Column("environment", sa.JSON(), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("weights", sa.String(length=16), nullable=False),
        sa.Column("device", sa.String(length=8), nullable=False),
        sa.Column("device_name", sa.String(length=200), nullable=False),
        sa.Column("torch", sa.String(length=64), nullable=False),
        sa.Column("transformers", sa.String(length=64), nullable=False),
        sa.Column("prunereg_version", sa.String(length=64), nullable=False),
        sa.Column("dtype", sa.String(length=16), nullable=False),
        sa.Column("execution_mode", sa.String(length=16), nullable=False),
        sa.Column("spec_hash", sa.String(length=64), nullable=False),
        sa.Column("parameters", INT, nullable=False),
        sa.Column("nonzero_parameters", INT, nullable=False),
        sa.Column("weight_bytes", INT, nullable=False),
        sa.Column("num_layers", INT, nullable=False),
        sa.Column("peak_memory_bytes", INT, nullable=True),
        sa.Column("dense_parameters", INT, nullable=False),
        sa.Column("dense_weight_bytes", INT, nullable=False),
        sa.Column("effects", sa.JSON(), nullable=False),
        sa.Column("gemms", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["operating_point_id"], ["operating_points.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("operating_point_id", "model", "weights", "environment_key"),
    )
    op.create_index(op.f("ix_runs_environment_key"), "runs", ["environment_key"])
    op.create_table(
        "latency_measurements",
        sa.Column("id", INT, nullable=False),
        sa.Column("run_id", INT, nullable=False),
        sa.Column("scenario", sa.String(length=64), nullable=False),
        sa.Column("phase", sa.String(length=16), nullable=False),
        sa.Column("batch_size", INT, nullable=False),
        sa.Column("seq_len", INT, nullable=False),
        sa.Column("unit", sa.String(length=8), nullable=False),
        sa.Column("median", sa.Double(), nullable=False),
        sa.Column("p20", sa.Double(), nullable=False),
        sa.Column("p80", sa.Double(), nullable=False),
        sa.Column("samples", sa.JSON(), nullable=False),
        sa.Column("dense_median", sa.Double(), nullable=False),
        sa.Column("theoretical", sa.Double(), nullable=False),
        sa.Column("theoretical_dense", sa.Double(), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("run_id", "scenario"),
    )
    op.create_table(
        "quality_results",
        sa.Column("id", INT, nullable=False),
        sa.Column("operating_point_id", INT, nullable=False),
        sa.Column("run_id", INT, nullable=True),
        sa.Column("identity", sa.String(length=64), nullable=False),
        sa.Column("provenance", sa.String(length=24), nullable=False),
        sa.Column("base_model", sa.String(length=200), nullable=False),
        sa.Column("base_model_revision", sa.String(length=64), nullable=True),
        sa.Column("task", sa.String(length=64), nullable=False),
        sa.Column("metric", sa.String(length=64), nullable=False),
        sa.Column("higher_is_better", sa.Boolean(), nullable=False),
        sa.Column("value", sa.Double(), nullable=False),
        sa.Column("dense_value", sa.Double(), nullable=False),
        sa.Column("shots", INT, nullable=True),
        sa.Column("tokens", INT, nullable=True),
        sa.Column("harness_name", sa.String(length=64), nullable=True),
        sa.Column("harness_version", sa.String(length=32), nullable=True),
        sa.Column("finetune_tokens", INT, nullable=False),
        sa.Column("arxiv", sa.String(length=16), nullable=True),
        sa.Column("paper_table", sa.String(length=60), nullable=True),
        sa.Column("measured_by", sa.String(length=120), nullable=True),
        sa.Column("note", sa.String(length=300), nullable=True),
        sa.Column("relative_loss", sa.Double(), nullable=True),
        sa.CheckConstraint(
            "provenance IN ('measured', 'reported', 'measured-elsewhere')",
            name="quality_provenance",
        ),
        sa.ForeignKeyConstraint(["operating_point_id"], ["operating_points.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("operating_point_id", "identity"),
    )
    op.create_index(op.f("ix_quality_results_run_id"), "quality_results", ["run_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_quality_results_run_id"), table_name="quality_results")

    op.drop_table("quality_results")
    op.drop_table("latency_measurements")
    op.drop_index(op.f("ix_runs_environment_key"), table_name="runs")

    op.drop_table("runs")
    op.drop_table("operating_points")
    op.drop_index(op.f("ix_submissions_method_id"), table_name="submissions")

    op.drop_table("submissions")
    op.drop_table("methods")
