"""Store submissions and, optionally, evaluations of them, all in one transaction.

Every row is got-or-created by its natural key, so ingesting the same submission and result
twice adds nothing. A run's key holds a digest of what it measured (`measurement_digest`): the
same point, model and environment measured again with other numbers is another run, kept next
to the first, so no measurement silently wins over another and the order of ingestion does not
change what is stored. Any error rolls the whole ingestion back.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy import Engine, select
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session

from prunereg.spec.catalog import models
from prunereg.spec.result_checks import (
    calibration_mismatch,
    checkpoint_mismatch,
    fallback_mismatch,
    ran_params,
    samples_mismatch,
    stand_in_mismatch,
)
from prunereg.spec.results import EvaluationResult, LatencyResult, PointResult, QualityResult, relative_loss
from prunereg.spec.submission import OperatingPoint, QualityClaim, Reported, Submission, spec_hash
from prunereg.spec.sweep import MeasurementFailure
from prunereg.spec.uncertainty import speedup_interval

from .db import writer
from .schema import (
    Base,
    FailedMeasurement,
    LatencyMeasurement,
    MethodRecord,
    OperatingPointRecord,
    QualityRecord,
    Run,
    SubmissionRecord,
)

T = TypeVar("T", bound=Base)
ATTEMPTS = 6
"""A concurrent worker may insert the same key between our select and insert (IntegrityError), or
PostgreSQL may abort one of two workers waiting on each other's keys (deadlock); the whole
transaction is then retried, and finds the other worker's rows."""
RETRY_SQLSTATES = {"40001", "40P01"}  # serialization failure, deadlock detected


def _retryable(err: DBAPIError) -> bool:
    return isinstance(err, IntegrityError) or getattr(err.orig, "sqlstate", None) in RETRY_SQLSTATES


@dataclass
class IngestSummary:
    method: str
    spec_hash: str
    added: Counter[str] = field(default_factory=Counter)
    existing: Counter[str] = field(default_factory=Counter)

    @property
    def changed(self) -> bool:
        return sum(self.added.values()) > 0

    def __str__(self) -> str:
        order = [t.name for t in Base.metadata.sorted_tables]
        added = ", ".join(f"{self.added[t]} {t}" for t in order if self.added[t]) or "nothing"
        return f"{self.method} ({self.spec_hash[:12]}): added {added}"


def ingest(
    engine: Engine, submission: Submission, result: EvaluationResult | None = None, *, update_method: bool = True
) -> IngestSummary:
    """Upsert the method, its submission, points and claims, and the result's runs; all or nothing."""
    return ingest_all(engine, [(submission, result)], update_method=update_method)[0]


def ingest_all(
    engine: Engine, items: Sequence[tuple[Submission, EvaluationResult | None]], *, update_method: bool = True
) -> list[IngestSummary]:
    """Ingest every (submission, result) pair in ONE transaction: all of them or none.

    `update_method=False` (results files from contributors) creates a missing method row but never
    changes an existing one: nothing in a results file rewrites a method's name or authors, or makes the
    version it embeds (a superseded one, say) the current one whose claims count.
    """
    for submission, result in items:
        _check_matches(submission, result)
    for attempt in range(ATTEMPTS):
        summaries = [IngestSummary(s.method.slug, s.spec_hash()) for s, _ in items]
        try:
            with Session(writer(engine)) as session, session.begin():
                for (submission, result), summary in zip(items, summaries):
                    points = _store_submission(session, submission, summary, update_method)
                    if result is not None:
                        for point_result in result.points:
                            _store_run(session, points[point_result.operating_point], result, point_result, summary)
            return summaries
        except DBAPIError as err:
            if attempt == ATTEMPTS - 1 or not _retryable(err):
                raise
            time.sleep(random.uniform(0, 0.05 * 2**attempt))  # let the other transaction finish
    raise AssertionError("unreachable")


def ingest_failures(engine: Engine, submission: Submission, failures: Sequence[MeasurementFailure]) -> IngestSummary:
    """Store the submission (as `ingest` does) and what it could not measure, in one transaction, retried as ingest's.

    Each failure is keyed by its point, scenario and `attempt`, so a retried transaction adds it once
    and the same point failing again later is another row: failures are records, never overwritten.
    """
    names = {p.name for p in submission.adapter.operating_points}
    unknown = sorted({f.operating_point for f in failures} - names)
    if unknown:
        raise ValueError(f"failure names unknown operating point {unknown[0]!r}")
    for attempt in range(ATTEMPTS):
        summary = IngestSummary(submission.method.slug, submission.spec_hash())
        try:
            with Session(writer(engine)) as session, session.begin():
                points = _store_submission(session, submission, summary)
                for failure in failures:
                    _store_failure(session, points[failure.operating_point], failure, summary)
            return summary
        except DBAPIError as err:
            if attempt == ATTEMPTS - 1 or not _retryable(err):
                raise
            time.sleep(random.uniform(0, 0.05 * 2**attempt))
    raise AssertionError("unreachable")


def _store_failure(
    session: Session, point: OperatingPointRecord, failure: MeasurementFailure, summary: IngestSummary
) -> None:
    scenario = failure.scenario
    env = failure.environment
    key = {"operating_point_id": point.id, "scenario": scenario.name, "attempt": failure.attempt}
    if session.scalars(select(FailedMeasurement.id).filter_by(**key)).first() is not None:
        summary.existing[FailedMeasurement.__tablename__] += 1
        return
    row = FailedMeasurement(
        **key,
        model=failure.model,
        weights=failure.weights,
        environment_key=env.key() if env else None,
        environment=env.model_dump(mode="json") if env else None,
        device=failure.device,
        device_name=failure.device_name,
        dtype=failure.dtype,
        execution_mode=failure.execution_mode,
        phase=scenario.phase.value,
        batch_size=scenario.batch_size,
        seq_len=scenario.seq_len,
        stage=failure.stage,
        kind=failure.kind,
        reason=failure.reason,
        node=failure.node,
    )  # not _get_or_create, whose own `model` parameter this table's column would shadow
    session.add(row)
    session.flush()
    summary.added[FailedMeasurement.__tablename__] += 1


def _check_matches(submission: Submission, result: EvaluationResult | None) -> None:
    names = {p.name for p in submission.adapter.operating_points}
    for claim in submission.quality_claims:
        if claim.operating_point not in names:
            raise ValueError(f"quality claim names unknown operating point {claim.operating_point!r}")
    if result is None:
        return
    if result.spec_hash != submission.spec_hash():
        raise ValueError(
            f"result is for spec {result.spec_hash[:12]}, submission {submission.method.slug} "
            f"hashes to {submission.spec_hash()[:12]}"
        )
    mode = result.environment.execution_mode
    arch = models().get(result.model)
    for point in result.points:
        if point.operating_point not in names:
            raise ValueError(f"result names unknown operating point {point.operating_point!r}")
        params = submission.point(point.operating_point).params_for(result.model)
        problem = stand_in_mismatch(result.weights, params, point.stand_in)
        if problem:
            raise ValueError(f"{point.operating_point}: stand-in {problem}")
        problem = calibration_mismatch(
            ran_params(params, point.stand_in).calibration_needed(),
            point.calibration,
            arch.max_position_embeddings if arch else None,
        )
        if problem:
            raise ValueError(f"{point.operating_point}: calibration record {problem}")
        problem = checkpoint_mismatch(submission.adapter.name, params, point.checkpoint)
        if problem:
            raise ValueError(f"{point.operating_point}: checkpoint record {problem}")
        for latency in point.latency:
            problem = fallback_mismatch(mode, latency) or samples_mismatch(latency)
            if problem:
                raise ValueError(f"{point.operating_point} {latency.scenario.name}: {problem}")


def _get_or_create(
    session: Session, summary: IngestSummary, model: type[T], key: dict[str, Any], **values: Any
) -> tuple[T, bool]:
    row = session.scalars(select(model).filter_by(**key)).one_or_none()
    if row is not None:
        summary.existing[model.__tablename__] += 1
        return row, False
    row = model(**key, **values)
    session.add(row)
    session.flush()
    summary.added[model.__tablename__] += 1
    return row, True


def _method_fields(spec: Submission) -> dict[str, Any]:
    m = spec.method
    return dict(
        name=m.name,
        family=spec.family.value,
        authors=list(m.authors),
        paper_title=m.paper.title,
        arxiv=m.paper.arxiv,
        url=m.paper.url,
        venue=m.paper.venue,
        year=m.paper.year,
        license=m.license,
        description=m.description,
    )


def _store_submission(
    session: Session, spec: Submission, summary: IngestSummary, update_method: bool = True
) -> dict[str, OperatingPointRecord]:
    method, _ = _get_or_create(session, summary, MethodRecord, {"slug": spec.method.slug}, **_method_fields(spec))
    submission, created = _get_or_create(
        session,
        summary,
        SubmissionRecord,
        {"spec_hash": spec.spec_hash()},
        method_id=method.id,
        schema_version=spec.schema_version,
        spec=spec.model_dump_json(indent=2),
    )
    if created and update_method:
        for name, value in _method_fields(spec).items():
            setattr(method, name, value)
    if update_method or method.current_spec_hash is None:
        method.current_spec_hash = spec.spec_hash()
    points = {}
    for point in spec.adapter.operating_points:
        points[point.name], _ = _get_or_create(
            session,
            summary,
            OperatingPointRecord,
            {"submission_id": submission.id, "name": point.name},
            description=point.description,
            params=_point_params(point),
        )
    for claim in spec.quality_claims:
        _store_claim(session, points[claim.operating_point], claim, summary)
    return points


def _loss(value: float, dense_value: float, higher_is_better: bool) -> float | None:
    return None if dense_value == 0 else relative_loss(value, dense_value, higher_is_better)


def _store_claim(session: Session, point: OperatingPointRecord, claim: QualityClaim, summary: IngestSummary) -> None:
    source = claim.provenance
    reported, elsewhere = (source, None) if isinstance(source, Reported) else (None, source)
    _get_or_create(
        session,
        summary,
        QualityRecord,
        {"operating_point_id": point.id, "identity": spec_hash(claim.model_dump(mode="json"))},
        run_id=None,
        provenance="reported" if reported else "measured-elsewhere",
        base_model=claim.base_model,
        base_model_revision=claim.base_model_revision,
        task=claim.task,
        metric=claim.metric,
        higher_is_better=claim.higher_is_better,
        value=claim.value,
        dense_value=claim.dense_value,
        shots=claim.shots,
        harness_name=claim.harness.name if claim.harness else None,
        harness_version=claim.harness.version if claim.harness else None,
        eval_length=claim.eval_length,
        tasks_averaged=claim.tasks_averaged or None,
        recovery=claim.recovery.model_dump(mode="json") if claim.recovery else None,
        calibration=claim.calibration.model_dump(mode="json", exclude_none=True) if claim.calibration else None,
        paper_row=reported.row if reported else None,
        arxiv=reported.arxiv if reported else None,
        paper_table=reported.table if reported else None,
        measured_by=elsewhere.by if elsewhere else None,
        note=(elsewhere.note or None) if elsewhere else None,
        relative_loss=_loss(claim.value, claim.dense_value, claim.higher_is_better),
    )


def _store_run(
    session: Session,
    point: OperatingPointRecord,
    result: EvaluationResult,
    point_result: PointResult,
    summary: IngestSummary,
) -> None:
    env = result.environment
    measured = _measured(result, point_result)
    run, _ = _get_or_create(
        session,
        summary,
        Run,
        {
            "operating_point_id": point.id,
            "model": result.model,
            "weights": result.weights,
            "environment_key": env.key(),
            "measurement": measurement_digest(**measured),
        },
        environment=env.model_dump(mode="json"),
        device=env.device,
        device_name=env.device_name,
        torch=env.torch,
        transformers=env.transformers,
        prunereg_version=env.prunereg,
        dtype=env.dtype,
        execution_mode=env.execution_mode,
        spec_hash=result.spec_hash,
        **measured["run"],
        effects=[e.model_dump(mode="json") for e in point_result.effects],
    )
    for latency in point_result.latency:
        _store_latency(session, run, latency, summary)
    for quality in point_result.quality:
        _store_measured_quality(session, run, result, quality, summary)


def _point_params(point: OperatingPoint) -> dict[str, Any]:
    """The point's plain parameters, and under "per_model" those it runs with on the models it names."""
    params = point.params.model_dump(mode="json")
    if point.per_model:
        params["per_model"] = {model: p.model_dump(mode="json") for model, p in point.per_model.items()}
    return params


def _store_latency(session: Session, run: Run, latency: LatencyResult, summary: IngestSummary) -> None:
    """One latency row, with the speedup interval computed here from its paired samples (never read from a file).

    A row stored before revision 0010 has no dense samples or timing record; the same measurement ingested
    again (same digest: the same pruned samples and dense median) fills them in, with the interval.
    """
    scenario = latency.scenario
    row = _latency_row(latency)
    extra = _interval(latency)
    stored, created = _get_or_create(
        session,
        summary,
        LatencyMeasurement,
        {"run_id": run.id, "scenario": row.pop("scenario")},
        phase=scenario.phase.value,
        batch_size=scenario.batch_size,
        seq_len=scenario.seq_len,
        unit=latency.unit,
        theoretical=latency.theoretical,
        theoretical_dense=latency.theoretical_dense,
        **row,
        **extra,
    )
    if not created:
        for name, value in (*extra.items(), ("timing", row["timing"])):
            if getattr(stored, name) is None and value is not None:
                setattr(stored, name, value)


def _interval(latency: LatencyResult) -> dict[str, Any]:
    """The dense samples and the speedup interval they give with the pruned ones; all None without them."""
    if latency.dense_samples is None:
        return dict(dense_samples=None, speedup_low=None, speedup_high=None)
    low, high = speedup_interval(latency.dense_samples, latency.samples)
    return dict(dense_samples=list(latency.dense_samples), speedup_low=low, speedup_high=high)


def _store_measured_quality(
    session: Session, run: Run, result: EvaluationResult, quality: QualityResult, summary: IngestSummary
) -> None:
    _get_or_create(
        session,
        summary,
        QualityRecord,
        {
            "operating_point_id": run.operating_point_id,
            "identity": measured_quality_identity(run, quality.task, quality.metric),
        },
        run_id=run.id,
        provenance="measured",
        base_model=result.model,
        task=quality.task,
        metric=quality.metric,
        higher_is_better=quality.higher_is_better,
        value=quality.value,
        dense_value=quality.dense_value,
        tokens=quality.tokens,
        shots=quality.shots,
        examples=quality.examples,
        task_version=quality.task_version,
        harness_name=quality.harness or "prunereg",
        harness_version=quality.harness_version or result.environment.prunereg,
        relative_loss=_loss(quality.value, quality.dense_value, quality.higher_is_better),
    )


MEASURED_RUN = (
    "parameters", "nonzero_parameters", "weight_bytes", "num_layers", "peak_memory_bytes", "dense_parameters",
    "dense_weight_bytes", "gemms",
)  # fmt: skip
MEASURED_LATENCY = (
    "scenario", "samples", "median", "p20", "p80", "dense_median", "execution", "fallback", "gpu_before", "gpu_after",
)  # fmt: skip
MEASURED_QUALITY = ("task", "metric", "value", "dense_value", "higher_is_better", "tokens")
MEASURED_QUALITY_SINCE_0005 = ("task_version", "shots", "examples", "harness", "harness_version")
"""Quality fields of results files written since tasks had versions: in the digest only where not None."""


def measurement_digest(run: dict[str, Any], latency: list[dict[str, Any]], quality: list[dict[str, Any]]) -> str:
    """What a run measured, as a hash: model sizes, traced GEMMs, every latency and quality figure.

    Theoretical times (recomputed from the declaration) and resolved effects (checked against it)
    are not measurements and are left out. Columns named in MEASURED_* only, so that revision
    0003 computes the same digest from stored rows as ingestion does from a results file.

    The calibration record (`run["calibration"]`, stored since revision 0004) is part of the digest:
    its seconds are a measurement of the method's cost, so the same point calibrated again in another
    time is another run, like one timed again. It enters the hash only where there is one: a run
    without (every run before 0004, and every point whose selection needs none) keeps the digest it
    had, so 0004 leaves stored digests unchanged and 0003 computes them from rows that have no record.
    The quality fields added with versioned tasks (MEASURED_QUALITY_SINCE_0005) follow the same rule: a
    figure names them only where its results file has them, so every older file keeps its digest. So does
    the checkpoint record (`run["checkpoint"]`, stored since revision 0006): the weights' sha256 say which
    bytes were measured, so other weights under the same folder are another run; only a `checkpoint` point
    has one, so every other run, and every file from before 0006, keeps its digest. The stand-in selection
    of a random-weight run (`run["stand_in"]`, since 0008) likewise: what pruned the model is part of what was
    measured, and only a run that had one names it.
    """
    blob: dict[str, Any] = {
        "run": {k: run[k] for k in MEASURED_RUN},
        "latency": sorted(({k: row[k] for k in MEASURED_LATENCY} for row in latency), key=lambda r: r["scenario"]),
        "quality": sorted((_measured_quality(row) for row in quality), key=lambda r: (r["task"], r["metric"])),
    }
    if run.get("calibration") is not None:
        blob["calibration"] = run["calibration"]
    if run.get("checkpoint") is not None:
        blob["checkpoint"] = run["checkpoint"]
    if run.get("stand_in") is not None:
        blob["stand_in"] = run["stand_in"]
    return spec_hash(blob)[:32]


def _measured_quality(row: dict[str, Any]) -> dict[str, Any]:
    figure = {k: row[k] for k in MEASURED_QUALITY}
    figure.update((k, row[k]) for k in MEASURED_QUALITY_SINCE_0005 if row.get(k) is not None)
    return figure


def measured_quality_identity(run: Any, task: str, metric: str) -> str:
    """A measured quality figure is one per run, task and metric."""
    return spec_hash(
        {"run": [run.model, run.weights, run.environment_key, run.measurement], "task": task, "metric": metric}
    )


def _measured(result: EvaluationResult, point: PointResult) -> dict[str, Any]:
    """The measured columns of one point's run, latency and quality rows, as stored."""
    stats = point.stats
    run: dict[str, Any] = dict(
        parameters=stats.parameters,
        nonzero_parameters=stats.nonzero_parameters,
        weight_bytes=stats.weight_bytes,
        num_layers=stats.num_layers,
        peak_memory_bytes=stats.peak_memory_bytes,
        dense_parameters=result.dense_stats.parameters,
        dense_weight_bytes=result.dense_stats.weight_bytes,
        gemms=[g.model_dump(mode="json") for g in point.gemms],
        calibration=point.calibration.model_dump(mode="json") if point.calibration else None,
        checkpoint=point.checkpoint.model_dump(mode="json") if point.checkpoint else None,
    )
    if point.stand_in is not None:  # named only where there is one, so earlier runs keep their digests
        run["stand_in"] = point.stand_in
    return dict(
        run=run,
        latency=[_latency_row(lat) for lat in point.latency],
        quality=[q.model_dump(mode="json") for q in point.quality],
    )


def _latency_row(latency: LatencyResult) -> dict[str, Any]:
    return dict(
        scenario=latency.scenario.name,
        samples=list(latency.samples),
        median=latency.median,
        p20=latency.p20,
        p80=latency.p80,
        dense_median=latency.dense_median,
        execution=latency.execution,
        fallback=latency.fallback,
        gpu_before=latency.gpu_before.model_dump(mode="json") if latency.gpu_before else None,
        gpu_after=latency.gpu_after.model_dump(mode="json") if latency.gpu_after else None,
        timing=latency.timing.model_dump(mode="json") if latency.timing else None,
    )
