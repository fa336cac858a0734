"""The registry's tables, named in the paper's words.

Besides its id, every table has a natural unique key (slug, spec hash, point name, environment
key and measurement digest, scenario name, quality identity). Ingestion gets-or-creates by that
key, and the database itself refuses duplicates, so re-ingesting is harmless on SQLite and
PostgreSQL alike.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

PROVENANCES = ("measured", "reported", "measured-elsewhere")
"""'measured': by prunereg in a run; the other two come from a submission's quality claims."""


def _now() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    # 64-bit integers (parameter counts pass 2**31); plain INTEGER on SQLite keeps rowid ids.
    type_annotation_map = {int: BigInteger().with_variant(Integer, "sqlite")}


class MethodRecord(Base):
    """A pruning method; its identity follows the newest submission ingested for its slug."""

    __tablename__ = "methods"

    id: Mapped[int] = mapped_column(primary_key=True)
    slug: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(120))
    family: Mapped[str] = mapped_column(String(32))
    authors: Mapped[list[Any]] = mapped_column(JSON)
    paper_title: Mapped[str] = mapped_column(String(300))
    arxiv: Mapped[str | None] = mapped_column(String(16))
    url: Mapped[str | None] = mapped_column(String(300))
    venue: Mapped[str | None] = mapped_column(String(100))
    year: Mapped[int]
    license: Mapped[str] = mapped_column(String(64))
    description: Mapped[str] = mapped_column(Text, default="")
    current_spec_hash: Mapped[str | None] = mapped_column(
        String(64),
        doc="the version last registered from the method's own file (register, evaluate; a results file only where the "
        "method had none): its quality claims are the method's, so a corrected transcription replaces the old one",
    )

    submissions: Mapped[list[SubmissionRecord]] = relationship(back_populates="method", order_by="SubmissionRecord.id")


class SubmissionRecord(Base):
    """One version of a method's spec, identified by the hash of its canonical JSON."""

    __tablename__ = "submissions"

    id: Mapped[int] = mapped_column(primary_key=True)
    method_id: Mapped[int] = mapped_column(ForeignKey("methods.id", ondelete="CASCADE"), index=True)
    spec_hash: Mapped[str] = mapped_column(String(64), unique=True)
    schema_version: Mapped[int]
    spec: Mapped[str] = mapped_column(Text, doc="the submission as pretty-printed JSON")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)

    method: Mapped[MethodRecord] = relationship(back_populates="submissions")
    operating_points: Mapped[list[OperatingPointRecord]] = relationship(
        back_populates="submission", order_by="OperatingPointRecord.id"
    )


class OperatingPointRecord(Base):
    __tablename__ = "operating_points"
    __table_args__ = (UniqueConstraint("submission_id", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    submission_id: Mapped[int] = mapped_column(ForeignKey("submissions.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(40))
    description: Mapped[str] = mapped_column(String(300), default="")
    params: Mapped[dict[str, Any]] = mapped_column(JSON)

    submission: Mapped[SubmissionRecord] = relationship(back_populates="operating_points")
    runs: Mapped[list[Run]] = relationship(back_populates="operating_point", order_by="Run.id")
    quality_results: Mapped[list[QualityRecord]] = relationship(
        back_populates="operating_point", order_by="QualityRecord.id"
    )
    failures: Mapped[list[FailedMeasurement]] = relationship(
        back_populates="operating_point", order_by="FailedMeasurement.id"
    )


class Run(Base):
    """One operating point evaluated on one model in one environment, with what prunereg measured.

    Random-weight and trained-weight runs of the same model are kept apart: `weights` is part of
    the key, since only the latter carries quality numbers. So is `measurement`, a digest of what
    the run measured: the same point measured twice in one environment with other numbers is two
    runs, never one overwritten or one silently dropped.
    """

    __tablename__ = "runs"
    __table_args__ = (
        UniqueConstraint(
            "operating_point_id", "model", "weights", "environment_key", "measurement", name="runs_natural_key"
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    operating_point_id: Mapped[int] = mapped_column(ForeignKey("operating_points.id", ondelete="CASCADE"))
    environment_key: Mapped[str] = mapped_column(String(32), index=True)
    measurement: Mapped[str] = mapped_column(String(32), doc="registry.ingest.measurement_digest of the run")
    environment: Mapped[dict[str, Any]] = mapped_column(JSON)
    model: Mapped[str] = mapped_column(String(200))
    weights: Mapped[str] = mapped_column(String(16))
    device: Mapped[str] = mapped_column(String(8))
    device_name: Mapped[str] = mapped_column(String(200))
    torch: Mapped[str] = mapped_column(String(64))
    transformers: Mapped[str] = mapped_column(String(64))
    prunereg_version: Mapped[str] = mapped_column(String(64))
    dtype: Mapped[str] = mapped_column(String(16))
    execution_mode: Mapped[str] = mapped_column(String(16))
    spec_hash: Mapped[str] = mapped_column(String(64))
    parameters: Mapped[int]
    nonzero_parameters: Mapped[int]
    weight_bytes: Mapped[int]
    num_layers: Mapped[int]
    peak_memory_bytes: Mapped[int | None]
    dense_parameters: Mapped[int]
    dense_weight_bytes: Mapped[int]
    effects: Mapped[list[Any]] = mapped_column(JSON, doc="declared effects resolved at this point")
    gemms: Mapped[list[Any]] = mapped_column(JSON, default=list, doc="traced GEMMs with the kernel each ran on")
    # none_as_null: a selection without calibration is SQL NULL, as in rows from before revision 0004
    calibration: Mapped[dict[str, Any] | None] = mapped_column(
        JSON(none_as_null=True), doc="spec.results.CalibrationRecord as JSON: calibration used and its seconds"
    )
    # none_as_null: a point of any adapter but `checkpoint` is SQL NULL, as in rows from before revision 0006
    stand_in: Mapped[str | None] = mapped_column(
        String(40), doc="random weights: the shape stand-in selection that pruned in place of the point's own"
    )
    checkpoint: Mapped[dict[str, Any] | None] = mapped_column(
        JSON(none_as_null=True), doc="spec.results.CheckpointRecord as JSON: the submitted folder and its sha256s"
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    retired_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), doc="when `prunereg runs retire` hid the run from fronts, bands and exports"
    )
    retired_why: Mapped[str | None] = mapped_column(String(300), doc="the reason given; shown on the method page")

    operating_point: Mapped[OperatingPointRecord] = relationship(back_populates="runs")
    latency: Mapped[list[LatencyMeasurement]] = relationship(back_populates="run", order_by="LatencyMeasurement.id")
    quality: Mapped[list[QualityRecord]] = relationship(back_populates="run", order_by="QualityRecord.id")


class LatencyMeasurement(Base):
    __tablename__ = "latency_measurements"
    __table_args__ = (UniqueConstraint("run_id", "scenario"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    scenario: Mapped[str] = mapped_column(String(64), doc="Scenario.name, e.g. decode-b1-c4096")
    phase: Mapped[str] = mapped_column(String(16))
    batch_size: Mapped[int]
    seq_len: Mapped[int]
    unit: Mapped[str] = mapped_column(String(8))
    median: Mapped[float]
    p20: Mapped[float]
    p80: Mapped[float]
    samples: Mapped[list[Any]] = mapped_column(JSON)
    # none_as_null: rows from before revision 0010, and files that kept no dense samples, are SQL NULL
    dense_samples: Mapped[list[Any] | None] = mapped_column(
        JSON(none_as_null=True), doc="the dense repeats, interleaved with `samples` (pair i: dense i, pruned i)"
    )
    speedup_low: Mapped[float | None] = mapped_column(
        doc="spec.uncertainty.speedup_interval of the samples, computed on ingestion; NULL without dense samples"
    )
    speedup_high: Mapped[float | None]
    timing: Mapped[dict[str, Any] | None] = mapped_column(
        JSON(none_as_null=True), doc="spec.results.Timing as JSON: threads, repeats added, load before the repeats"
    )
    dense_median: Mapped[float]
    theoretical: Mapped[float]
    theoretical_dense: Mapped[float]
    execution: Mapped[str] = mapped_column(
        String(16), server_default="eager", doc="how it really ran: the run's execution mode, or eager after a fallback"
    )
    fallback: Mapped[str | None] = mapped_column(String(300), doc="why the run's execution mode could not be used")
    # none_as_null: no reading is SQL NULL, as in rows from before revision 0002, not a JSON 'null'
    gpu_before: Mapped[dict[str, Any] | None] = mapped_column(
        JSON(none_as_null=True), doc="NVML reading before the repeats"
    )
    gpu_after: Mapped[dict[str, Any] | None] = mapped_column(
        JSON(none_as_null=True), doc="NVML reading after the repeats"
    )

    run: Mapped[Run] = relationship(back_populates="latency")


class QualityRecord(Base):
    """A quality figure for an operating point, measured here (with its run) or claimed by the submitter.

    `identity` is a hash of what makes two figures the same figure; SQL treats NULLs as distinct
    in unique constraints, so a nullable run id alone could not keep claims unique.
    """

    __tablename__ = "quality_results"
    __table_args__ = (
        UniqueConstraint("operating_point_id", "identity"),
        CheckConstraint(f"provenance IN {PROVENANCES!r}", name="quality_provenance"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    operating_point_id: Mapped[int] = mapped_column(ForeignKey("operating_points.id", ondelete="CASCADE"))
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    identity: Mapped[str] = mapped_column(String(64))
    provenance: Mapped[str] = mapped_column(String(24))
    base_model: Mapped[str] = mapped_column(String(200))
    base_model_revision: Mapped[str | None] = mapped_column(String(64))
    task: Mapped[str] = mapped_column(String(64))
    metric: Mapped[str] = mapped_column(String(64))
    higher_is_better: Mapped[bool]
    value: Mapped[float]
    dense_value: Mapped[float]
    shots: Mapped[int | None]
    tokens: Mapped[int | None] = mapped_column(doc="tokens scored, for measured perplexity")
    harness_name: Mapped[str | None] = mapped_column(String(64))
    harness_version: Mapped[str | None] = mapped_column(String(32))
    task_version: Mapped[str | None] = mapped_column(String(16), doc="spec/tasks.py version, for measured figures")
    examples: Mapped[int | None] = mapped_column(doc="examples scored, for measured question-answering tasks")
    eval_length: Mapped[int | None] = mapped_column(doc="tokens per evaluation window of a claimed perplexity")
    tasks_averaged: Mapped[list[str] | None] = mapped_column(JSON(none_as_null=True), doc="tasks of a claimed average")
    # none_as_null: one-shot claims and measured figures are SQL NULL, as in rows from before revision 0007
    recovery: Mapped[dict[str, Any] | None] = mapped_column(
        JSON(none_as_null=True), doc="spec.submission.Recovery as JSON: fine-tuning after pruning; None: one-shot"
    )
    calibration: Mapped[dict[str, Any] | None] = mapped_column(
        JSON(none_as_null=True), doc="spec.submission.CalibrationUsed as JSON, as the claim states it"
    )
    paper_row: Mapped[str | None] = mapped_column(String(400), doc="the row of the paper's table, as printed")
    arxiv: Mapped[str | None] = mapped_column(String(16))
    paper_table: Mapped[str | None] = mapped_column(String(60))
    measured_by: Mapped[str | None] = mapped_column(String(120))
    note: Mapped[str | None] = mapped_column(String(300))
    relative_loss: Mapped[float | None] = mapped_column(doc="None when the dense value is zero")

    operating_point: Mapped[OperatingPointRecord] = relationship(back_populates="quality_results")
    run: Mapped[Run | None] = relationship(back_populates="quality")


class FailedMeasurement(Base):
    """A scenario of an operating point that an evaluation could not measure, and why (spec.sweep.MeasurementFailure).

    Kept for good: a later run of the same point, model, device, dtype, mode and scenario only stops
    the leaderboard from showing it (registry.queries.failures). Each failure recorded is its own row
    (`attempt`, one id per recording), so the same point failing twice is two rows, and a retried
    transaction stores it once.
    """

    __tablename__ = "failed_measurements"
    __table_args__ = (UniqueConstraint("operating_point_id", "scenario", "attempt"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    operating_point_id: Mapped[int] = mapped_column(ForeignKey("operating_points.id", ondelete="CASCADE"), index=True)
    attempt: Mapped[str] = mapped_column(String(32))
    model: Mapped[str] = mapped_column(String(300))
    weights: Mapped[str | None] = mapped_column(String(16), doc="None where the model never loaded")
    environment_key: Mapped[str | None] = mapped_column(String(32))
    # none_as_null: a worker that died before saying where it ran is SQL NULL
    environment: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))
    device: Mapped[str] = mapped_column(String(8))
    device_name: Mapped[str] = mapped_column(String(300))
    dtype: Mapped[str] = mapped_column(String(16))
    execution_mode: Mapped[str] = mapped_column(String(16))
    scenario: Mapped[str] = mapped_column(String(64))
    phase: Mapped[str] = mapped_column(String(16))
    batch_size: Mapped[int]
    seq_len: Mapped[int]
    stage: Mapped[str] = mapped_column(String(300), doc="where it failed: loading the model, a scenario's name, ...")
    kind: Mapped[str] = mapped_column(String(32), doc="spec.sweep.FAILURE_KINDS")
    reason: Mapped[str] = mapped_column(String(1000))
    node: Mapped[str | None] = mapped_column(String(300), doc="the Ray node it ran on")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)

    operating_point: Mapped[OperatingPointRecord] = relationship(back_populates="failures")
