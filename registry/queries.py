"""Read the registry into plain, frozen records: the one read model of the leaderboard, the CLI and export.

The site never sees ORM objects: these records are everything it may show, so the schema can
move under them. A leaderboard row is one latency measurement with its method, percentiles, whole
environment fingerprint, measured quality loss and its place on the Pareto front of its group.
Records hold data only; how it reads on a page (family labels, kernel notes, noise flags) is
leaderboard/display.py's.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Collection
from dataclasses import dataclass, field, fields
from datetime import datetime
from sys import intern  # one string object per repeated value (slug, model, scenario, ...), not one per row
from typing import Any, NamedTuple

from sqlalchemy import Engine, Select, String, Text, cast, func, or_, select, tuple_, type_coerce
from sqlalchemy.orm import Session, selectinload

from prunereg.spec.catalog import models
from prunereg.spec.division import division
from prunereg.spec.results import GemmTrace, unaligned
from prunereg.spec.submission import QualityClaim
from prunereg.spec.uncertainty import noise

from .pareto import SpeedupKind, ranked
from .schema import (
    FailedMeasurement,
    LatencyMeasurement,
    MethodRecord,
    OperatingPointRecord,
    QualityRecord,
    Run,
    SubmissionRecord,
)

TWO_BYTE_DTYPES = ("bfloat16", "float16")
"""Run dtypes whose weight rows must be 8 elements apart to be 16-byte aligned (GPU runs; CPU runs are float32)."""
MODEL_GEMMS_ONLY = ("router", "other")
"""Traced GEMM kinds that are not the model's matrix products; their kernels say nothing about the pruning."""


class GroupKey(NamedTuple):
    """Rows are only comparable inside one group: same model, device, dtype, execution mode and scenario,
    and for reported quality the same task under the same protocol (`claim_task`)."""

    model: str
    device_name: str
    dtype: str
    execution_mode: str
    scenario: str
    task: str | None = None
    """Reported quality only: the claims' task, metric and protocol; None for prunereg's measured quality."""


@dataclass(frozen=True, slots=True)
class Row:
    method_slug: str
    method_name: str
    family: str
    operating_point: str
    spec_hash: str
    model: str
    weights: str
    device_name: str
    execution_mode: str
    dtype: str
    environment_key: str
    scenario: str
    phase: str
    batch_size: int
    seq_len: int
    median_ms: float
    p20_ms: float
    p80_ms: float
    dense_median_ms: float
    speedup: float
    theoretical_speedup: float
    realization: float
    quality_loss: float | None
    quality_task: str | None
    quality_metric: str | None
    environment: dict[str, Any]
    """The run's whole fingerprint (spec.results.Environment as JSON); `environment_key` is its hash."""
    kernels: tuple[str, ...] = ()
    """Distinct kernels the run's traced model GEMMs ran on (dense, masked dense, sparse 2:4, ...)."""
    unaligned: tuple[str, ...] = ()
    """Its dense weight GEMMs whose N or K is not 16-byte aligned (spec.results.unaligned), e.g. "down_proj K =
    6738"; for runs in a 2-byte dtype (a GPU's) only."""
    execution: str = "eager"
    """How the steps really ran: `execution_mode`, or eager when `fallback` says why that mode failed."""
    fallback: str | None = None
    gpu_before: dict[str, Any] | None = None
    """spec.results.GpuState as JSON, read before the timed repeats (CUDA with NVML only)."""
    gpu_after: dict[str, Any] | None = None
    calibration: dict[str, Any] | None = None
    """The run's spec.results.CalibrationRecord as JSON (data used and seconds); None where the selection needs none."""
    checkpoint: dict[str, Any] | None = None
    """The run's spec.results.CheckpointRecord as JSON (folder, base, sha256 per file); None but for `checkpoint`."""
    stand_in: str | None = None
    """Random weights: the shape stand-in selection that pruned in place of the point's own; None where it ran."""
    run_id: int | None = None
    """The registry's id of the run (`prunereg runs list`, `prunereg runs retire`)."""
    speedup_low: float | None = None
    """Low end of the measured speedup's paired-bootstrap interval (spec.uncertainty); None without dense samples."""
    speedup_high: float | None = None
    excluded: str | None = None
    """Why the row is left out of its group's ranking (front, bands): its measured speedup is too noisy
    (spec.uncertainty.noise). None: ranked. Always None in a theoretical ranking, which has no noise."""
    pareto: bool = False
    dominated_by: int | None = None

    @property
    def spread(self) -> float:
        """p80/p20 − 1 of the pruned latency: how far the median can be trusted."""
        return self.p80_ms / self.p20_ms - 1.0

    @property
    def group(self) -> GroupKey:
        return GroupKey(self.model, self.device_name, self.dtype, self.execution_mode, self.scenario)

    def sort_key(self) -> tuple:
        return (
            self.model, self.device_name, self.execution_mode, self.phase != "prefill", self.batch_size,
            self.seq_len, self.method_slug, self.operating_point, self.weights, self.environment_key, self.spec_hash,
        )  # fmt: skip


def _first_measured_quality(session: Session, runs: Select | None = None) -> dict[int, tuple[float | None, str, str]]:
    """(relative loss, task, metric) of the first measured quality figure of each run (of those `runs` selects): the
    harness lists its primary task first."""
    first: dict[int, tuple[float | None, str, str]] = {}
    stmt = (
        select(QualityRecord.run_id, QualityRecord.relative_loss, QualityRecord.task, QualityRecord.metric)
        .where(QualityRecord.provenance == "measured", QualityRecord.run_id.is_not(None))
        .order_by(QualityRecord.id)
    )
    if runs is not None:
        stmt = stmt.where(QualityRecord.run_id.in_(runs))
    for run_id, *figure in session.execute(stmt):
        first.setdefault(run_id, tuple(figure))  # type: ignore[arg-type]
    return first


def _kernels(gemms: list[dict[str, Any]] | None) -> tuple[str, ...]:
    return tuple(sorted({g["kernel"] for g in gemms or [] if g["gemm"] not in MODEL_GEMMS_ONLY}))


def _unaligned(gemms: list[dict[str, Any]] | None, dtype: str) -> tuple[str, ...]:
    """Stored traces were validated when they were ingested: read back without validating each again."""
    if dtype not in TWO_BYTE_DTYPES or not gemms:
        return ()
    return tuple(unaligned([GemmTrace.model_construct(**g) for g in gemms], dtype_bytes=2))


class _RunFacts(NamedTuple):
    environment: dict[str, Any]
    kernels: tuple[str, ...]
    unaligned: tuple[str, ...]
    calibration: dict[str, Any] | None
    checkpoint: dict[str, Any] | None
    stand_in: str | None


def _run_facts(session: Session, runs: Select | None = None) -> dict[int, _RunFacts]:
    """Per-run data that every latency row of the run shares, read once per run (not once per scenario)."""
    stmt = select(
        Run.id, Run.device_name, Run.dtype, Run.execution_mode, Run.environment, Run.gemms, Run.calibration,
        Run.checkpoint, Run.stand_in,
    )  # fmt: skip
    if runs is not None:
        stmt = stmt.where(Run.id.in_(runs))
    facts = {}
    for run_id, device_name, dtype, mode, environment, gemms, calibration, checkpoint, stand_in in session.execute(
        stmt
    ):
        fingerprint = {"device_name": device_name, "dtype": dtype, "execution_mode": mode, **environment}
        facts[run_id] = _RunFacts(
            fingerprint, _kernels(gemms), _unaligned(gemms, dtype), calibration, checkpoint, stand_in
        )
    return facts


def _json_value(stored: Any) -> Any:
    """A JSON column read as text (most rows hold null: no decoding for them); a driver that decodes JSON itself
    (psycopg) hands over the value."""
    if not isinstance(stored, str):
        return stored
    return None if stored == "null" else json.loads(stored)


def _group_columns() -> tuple:
    return (Run.model, Run.device_name, Run.dtype, Run.execution_mode, LatencyMeasurement.scenario)


def leaderboard_rows(
    engine: Engine,
    speedup: SpeedupKind = "measured",
    phase: str | None = None,
    batch_size: int | None = None,
    *,
    groups: Collection[GroupKey] | None = None,
    methods: Collection[str] | None = None,
) -> list[Row]:
    """Every latency measurement of a run that is not retired as a row, sorted deterministically, with Pareto
    flags per group; a row whose measured speedup is too noisy is `excluded` from the measured ranking, with why.

    Reads columns, not ORM objects: a latency's raw samples are never loaded, and each run's fingerprint and
    kernels are read once and shared by its rows, so a registry of a million rows builds in one pass. `phase`,
    `batch_size` and `groups` (measured-quality keys) select whole groups in the query, so the flags are the same as
    unselected; `methods` (slugs) selects those methods' rows, unranked (a front needs its whole group).
    """
    if speedup not in ("measured", "theoretical"):
        raise ValueError(f"speedup must be 'measured' or 'theoretical', not {speedup!r}")
    stmt = (
        select(
            Run.id,
            MethodRecord.slug,
            MethodRecord.name,
            MethodRecord.family,
            OperatingPointRecord.name,
            SubmissionRecord.spec_hash,
            Run.model,
            Run.weights,
            Run.device_name,
            Run.execution_mode,
            Run.dtype,
            Run.environment_key,
            LatencyMeasurement.scenario,
            LatencyMeasurement.phase,
            LatencyMeasurement.batch_size,
            LatencyMeasurement.seq_len,
            LatencyMeasurement.median,
            LatencyMeasurement.p20,
            LatencyMeasurement.p80,
            LatencyMeasurement.dense_median,
            LatencyMeasurement.theoretical,
            LatencyMeasurement.theoretical_dense,
            LatencyMeasurement.execution,
            LatencyMeasurement.fallback,
            type_coerce(LatencyMeasurement.gpu_before, Text),
            type_coerce(LatencyMeasurement.gpu_after, Text),
            LatencyMeasurement.speedup_low,
            LatencyMeasurement.speedup_high,
        )  # fmt: skip
        .join(LatencyMeasurement.run)
        .join(Run.operating_point)
        .join(OperatingPointRecord.submission)
        .join(SubmissionRecord.method)
        .where(Run.retired_at.is_(None))
    )
    if phase is not None:
        stmt = stmt.where(LatencyMeasurement.phase == phase)
    if batch_size is not None:
        stmt = stmt.where(LatencyMeasurement.batch_size == batch_size)
    if groups is not None:
        stmt = stmt.where(tuple_(*_group_columns()).in_([tuple(k[:5]) for k in groups]))
    if methods is not None:
        stmt = stmt.where(MethodRecord.slug.in_(list(methods)))
    selected = groups is not None or methods is not None
    runs = stmt.with_only_columns(Run.id).distinct() if selected else None
    rows = []
    with Session(engine) as session:
        quality = _first_measured_quality(session, runs)
        facts = _run_facts(session, runs)
        for (run_id, slug, name, family, point, spec_hash, model, weights, device_name, mode, dtype, environment_key,
             scenario, phase, batch_size, seq_len, median, p20, p80, dense_median, theoretical, theoretical_dense,
             execution, fallback, gpu_before, gpu_after, low, high) in session.execute(stmt):  # fmt: skip
            q = quality.get(run_id)
            run = facts[run_id]
            measured = dense_median / median
            theoretical_speedup = theoretical_dense / theoretical
            rows.append(
                Row(
                    method_slug=intern(slug),
                    method_name=intern(name),
                    family=intern(family),
                    operating_point=intern(point),
                    spec_hash=intern(spec_hash),
                    model=intern(model),
                    weights=intern(weights),
                    device_name=intern(device_name),
                    execution_mode=intern(mode),
                    dtype=intern(dtype),
                    environment_key=intern(environment_key),
                    scenario=intern(scenario),
                    phase=intern(phase),
                    batch_size=batch_size,
                    seq_len=seq_len,
                    median_ms=median,
                    p20_ms=p20,
                    p80_ms=p80,
                    dense_median_ms=dense_median,
                    speedup=measured,
                    theoretical_speedup=theoretical_speedup,
                    realization=measured / theoretical_speedup,
                    quality_loss=q[0] if q else None,
                    quality_task=q[1] if q else None,
                    quality_metric=q[2] if q else None,
                    environment=run.environment,
                    kernels=run.kernels,
                    unaligned=run.unaligned,
                    execution=intern(execution),
                    fallback=fallback,
                    gpu_before=_json_value(gpu_before),
                    gpu_after=_json_value(gpu_after),
                    calibration=run.calibration,
                    checkpoint=run.checkpoint,
                    stand_in=run.stand_in,
                    run_id=run_id,
                    speedup_low=low,
                    speedup_high=high,
                    excluded=noise(measured, low, high, p80 / p20 - 1) if speedup == "measured" else None,
                )  # fmt: skip
            )
    rows.sort(key=Row.sort_key)
    return rows if methods is not None else ranked(rows, speedup)


class MethodInGroup(NamedTuple):
    """What one method has in one group, as stored: enough to tell that the group's rows changed without reading
    them. Records are only added (ids grow), and a retired run leaves the count and the id sums."""

    slug: str
    name: str
    family: str
    rows: int
    """Its rows in the group: one per run (a run has one latency row per scenario)."""
    run_ids: int
    """The sum of those runs' ids: a run retired and another one added give another sum."""
    newest_latency: int
    """The newest latency row of those runs, in any scenario, and the sum of their ids: a row added to a stored run
    changes them (and every group of the run is read again)."""
    latency_ids: int
    newest_quality: int | None
    """The newest measured quality figure of those runs (a figure can be added to a stored run)."""


class GroupCensus(NamedTuple):
    phase: str
    batch_size: int
    seq_len: int
    methods: tuple[MethodInGroup, ...]
    """By slug."""

    @property
    def rows(self) -> int:
        return sum(m.rows for m in self.methods)


_UNIT, _PART = "\x1f", "\x1e"


def group_census(engine: Engine) -> dict[GroupKey, GroupCensus]:
    """Per measured-quality group of `leaderboard_rows`, its scenario and its methods' `MethodInGroup`: what an
    incremental site build compares with the last build's to find the groups to read. Aggregated per run and per
    set of scenarios in the database (a few rows per method and device), not per latency row."""
    L = LatencyMeasurement
    described = L.scenario + _UNIT + L.phase + _UNIT + cast(L.batch_size, String) + _UNIT + cast(L.seq_len, String)
    per_run = (
        select(
            L.run_id,
            func.aggregate_strings(described, _PART).label("scenarios"),
            func.max(L.id).label("newest"),
            func.sum(L.id).label("ids"),
        )  # fmt: skip
        .group_by(L.run_id)
        .subquery()
    )
    quality = (
        select(QualityRecord.run_id, func.max(QualityRecord.id).label("newest"))
        .where(QualityRecord.provenance == "measured", QualityRecord.run_id.is_not(None))
        .group_by(QualityRecord.run_id)
        .subquery()
    )
    same = (Run.model, Run.device_name, Run.dtype, Run.execution_mode, MethodRecord.slug, MethodRecord.name,
            MethodRecord.family, per_run.c.scenarios)  # fmt: skip
    stmt = (
        select(
            *same,
            func.count(Run.id),
            func.sum(Run.id),
            func.max(per_run.c.newest),
            func.sum(per_run.c.ids),
            func.max(quality.c.newest),
        )  # fmt: skip
        .join(per_run, per_run.c.run_id == Run.id)
        .join(Run.operating_point)
        .join(OperatingPointRecord.submission)
        .join(SubmissionRecord.method)
        .outerjoin(quality, quality.c.run_id == Run.id)
        .where(Run.retired_at.is_(None))
        .group_by(*same)
    )
    scenario: dict[GroupKey, tuple[str, int, int]] = {}
    found: dict[GroupKey, dict[str, list]] = defaultdict(dict)
    with Session(engine) as session:
        for model, device, dtype, mode, slug, name, family, scenarios, runs, run_ids, newest, ids, q in session.execute(
            stmt
        ):
            for part in scenarios.split(_PART):
                name_, phase, batch, seq_len = part.split(_UNIT)
                key = GroupKey(model, device, dtype, mode, name_)
                scenario.setdefault(key, (phase, int(batch), int(seq_len)))
                now = found[key].get(slug)
                if now is None:
                    found[key][slug] = [slug, name, family, runs, run_ids, newest, ids, q]
                else:
                    now[3:7] = now[3] + runs, now[4] + run_ids, max(now[5], newest), now[6] + ids
                    now[7] = q if now[7] is None else now[7] if q is None else max(now[7], q)
    return {
        key: GroupCensus(*scenario[key], tuple(MethodInGroup(*found[key][s]) for s in sorted(found[key])))
        for key in found
    }


def measured_models(engine: Engine) -> set[str]:
    """The models with a latency row on the leaderboard (of a run that is not retired)."""
    stmt = select(Run.model).join(Run.latency).where(Run.retired_at.is_(None)).distinct()
    with Session(engine) as session:
        return set(session.scalars(stmt))


def claim_task(q: QualityRecord | Quality | QualityClaim) -> str:
    """What two claimed figures must share to be compared, in words: task, metric, averaged tasks, protocol.

    Base model and scenario come from the row's group; perplexities at other window lengths, averages
    over other task lists and other shot counts are other quantities, so they are other groups.
    """
    parts = [q.task, q.metric]
    if q.tasks_averaged:
        parts.append("of " + ", ".join(sorted(q.tasks_averaged)))
    if q.eval_length is not None:
        parts.append(f"{q.eval_length}-token windows")
    if q.shots:
        parts.append(f"{q.shots}-shot")
    return " · ".join(parts)


@dataclass(frozen=True)
class ReportedRow(Row):
    """A latency row of a catalog model's shapes joined with a quality claim a paper reports for the same
    operating point and base model: reported quality x measured speed, never mixed with measured quality."""

    base_model: str = ""
    """The claim's base model: the row's `model`, or a catalog model of the same shapes that was timed for it."""
    task: str = ""
    """`claim_task` of the claim: rows are only compared within one task."""
    value: float = math.nan
    dense_value: float = math.nan
    arxiv: str = ""
    paper_table: str = ""
    paper_row: str = ""
    recovery: dict[str, Any] | None = None
    """spec.submission.Recovery as JSON; None: one-shot pruning."""

    @property
    def group(self) -> GroupKey:
        return GroupKey(self.base_model, self.device_name, self.dtype, self.execution_mode, self.scenario, self.task)


_CURRENT_VERSION = or_(
    MethodRecord.current_spec_hash.is_(None), SubmissionRecord.spec_hash == MethodRecord.current_spec_hash
)
"""A submission row that is its method's current version, whose claims are the method's (every version where the
registry names none). `_summary` applies the same rule to loaded objects."""


def reported_rows(
    engine: Engine, speedup: SpeedupKind = "measured", recovery: bool = False, measured: list[Row] | None = None
) -> list[ReportedRow]:
    """Every latency row of a base model that a paper reports quality for at that operating point, once per claim.

    The claims are those of the method's current version (`MethodRecord.current_spec_hash`): a superseded
    version's claims, corrected since, do not count. A claim meets a run through the method, the point's name
    and parameters and the base model, so runs of an earlier submission version whose point is unchanged still
    count. A base model that was not timed itself borrows the runs of the first catalog model of its shapes that
    was (`ModelArchitecture.shapes`: LLaMA-7B's claims take Llama-2-7B's latency); the row's `model` says which
    was timed, its group the claim's base model.
    `recovery` admits claims that include fine-tuning after pruning (a different budget from one-shot pruning;
    left out by default). `measured` is `leaderboard_rows(engine, speedup)` where the caller has it already; without
    it, only the rows of methods with a claim are read.
    """
    claims: dict[tuple[str, str, str, str], dict[str, QualityRecord]] = defaultdict(dict)
    params: dict[tuple[str, str], str] = {}
    with Session(engine) as session:
        points = select(OperatingPointRecord, SubmissionRecord).join(OperatingPointRecord.submission)
        for point, submission in session.execute(points):
            params[(submission.spec_hash, point.name)] = json.dumps(point.params, sort_keys=True)
        stmt = (
            select(QualityRecord, OperatingPointRecord, SubmissionRecord, MethodRecord)
            .join(QualityRecord.operating_point)
            .join(OperatingPointRecord.submission)
            .join(SubmissionRecord.method)
            .where(QualityRecord.provenance == "reported", _CURRENT_VERSION)
        )
        for q, point, _, method in session.execute(stmt):
            if q.relative_loss is None or (q.recovery is not None and not recovery):
                continue
            key = (method.slug, point.name, json.dumps(point.params, sort_keys=True), q.base_model)
            claims[key].setdefault(q.identity, q)  # without a current version, the same claim in two counts once
            session.expunge(q)
    if measured is None:
        timed = measured_models(engine)
        measured = leaderboard_rows(engine, speedup, methods={slug for slug, *_ in claims}) if claims else []
    else:
        timed = {r.model for r in measured}
    timed_as = _timed_as({base for *_, base in claims}, timed)
    by_timed: dict[tuple[str, str, str, str], list[QualityRecord]] = defaultdict(list)
    for (slug, point_name, point_params, base), same in claims.items():
        if base in timed_as:
            by_timed[(slug, point_name, point_params, timed_as[base])].extend(same.values())
    rows = []
    for row in measured:
        key = (row.method_slug, row.operating_point, params[(row.spec_hash, row.operating_point)], row.model)
        for q in by_timed.get(key, []):
            as_measured = {f.name: getattr(row, f.name) for f in fields(Row)}
            as_measured.update(quality_loss=q.relative_loss, quality_task=q.task, quality_metric=q.metric)
            rows.append(
                ReportedRow(
                    **as_measured,
                    base_model=q.base_model,
                    task=claim_task(q),
                    value=q.value,
                    dense_value=q.dense_value,
                    arxiv=q.arxiv or "",
                    paper_table=q.paper_table or "",
                    paper_row=q.paper_row or "",
                    recovery=q.recovery,
                )
            )
    rows.sort(key=lambda r: (*r.sort_key(), r.task, r.arxiv, r.paper_table, r.value))
    return ranked(rows, speedup)


def _timed_as(bases: set[str], timed: set[str]) -> dict[str, str]:
    """For each claimed base model, the model whose runs give its latency: itself, else the first timed catalog
    model of its shapes; bases with neither are left out."""
    catalog = models()
    out = {}
    for base in bases:
        if base in timed:
            out[base] = base
        elif base in catalog:
            same = sorted(m for m in timed if m in catalog and catalog[m].shapes() == catalog[base].shapes())
            if same:
                out[base] = same[0]
    return out


@dataclass(frozen=True)
class MethodSummary:
    slug: str
    name: str
    family: str
    authors: list[str]
    paper_title: str
    arxiv: str | None
    url: str | None
    year: int
    submissions: int
    runs: int
    division: str = "closed"
    """spec.division's 'closed' or 'open', over every version, run and claim of the method."""
    division_reason: str = ""


def _summary(m: MethodRecord) -> MethodSummary:
    points = [p for s in m.submissions for p in s.operating_points]
    runs = sum(len(p.runs) for p in points)
    claimed = [p for s in m.submissions if m.current_spec_hash in (None, s.spec_hash) for p in s.operating_points]
    verdict = division(
        [json.loads(s.spec)["adapter"]["name"] for s in m.submissions],
        [r.model for p in points for r in p.runs],
        any(q.provenance == "measured" and q.run_id is not None for p in points for q in p.quality_results),
        len({(p.name, q.identity) for p in claimed for q in p.quality_results if q.run_id is None}),
    )
    return MethodSummary(
        m.slug, m.name, m.family, list(m.authors), m.paper_title,
        m.arxiv, m.url, m.year, len(m.submissions), runs, *verdict,
    )  # fmt: skip


def methods(engine: Engine) -> list[MethodSummary]:
    """All methods by slug, with how many submissions and runs each has.

    The same summary as `_summary` of each method, from five aggregate queries instead of walking every
    method's submissions, points, runs and quality figures object by object.
    """
    adapters: dict[int, list[str]] = defaultdict(list)
    models_of: dict[int, set[str]] = defaultdict(set)
    runs: dict[int, int] = defaultdict(int)
    claims: dict[int, set[tuple[str, str]]] = defaultdict(set)
    with Session(engine) as session:
        for method_id, spec in session.execute(select(SubmissionRecord.method_id, SubmissionRecord.spec)):
            adapters[method_id].append(json.loads(spec)["adapter"]["name"])
        per_model = (
            select(SubmissionRecord.method_id, Run.model, func.count(Run.id))
            .join(Run.operating_point)
            .join(OperatingPointRecord.submission)
            .group_by(SubmissionRecord.method_id, Run.model)
        )
        for method_id, model, count in session.execute(per_model):
            models_of[method_id].add(model)
            runs[method_id] += count
        quality = (
            select(
                SubmissionRecord.method_id,
                OperatingPointRecord.name,
                QualityRecord.identity,
                QualityRecord.run_id,
                QualityRecord.provenance,
            )  # fmt: skip
            .join(QualityRecord.operating_point)
            .join(OperatingPointRecord.submission)
            .join(SubmissionRecord.method)
            .where(or_(QualityRecord.run_id.is_not(None), _CURRENT_VERSION))  # claims: the current version's
            .distinct()
        )
        measured: set[int] = set()
        for method_id, point, identity, run_id, provenance in session.execute(quality):
            if run_id is None:
                claims[method_id].add((point, identity))
            elif provenance == "measured":
                measured.add(method_id)
        out = []
        for m in session.scalars(select(MethodRecord).order_by(MethodRecord.slug)):
            verdict = division(adapters[m.id], models_of[m.id], m.id in measured, len(claims[m.id]))
            out.append(MethodSummary(
                m.slug, m.name, m.family, list(m.authors), m.paper_title, m.arxiv, m.url, m.year,
                len(adapters[m.id]), runs[m.id], *verdict,
            ))  # fmt: skip
        return out


@dataclass(frozen=True)
class Quality:
    provenance: str
    base_model: str
    base_model_revision: str | None
    task: str
    metric: str
    higher_is_better: bool
    value: float
    dense_value: float
    relative_loss: float | None
    shots: int | None
    tokens: int | None
    harness: str | None
    arxiv: str | None
    paper_table: str | None
    measured_by: str | None
    note: str | None
    eval_length: int | None = None
    tasks_averaged: tuple[str, ...] = ()
    recovery: dict[str, Any] | None = None
    """spec.submission.Recovery as JSON; None: one-shot."""
    calibration: dict[str, Any] | None = None
    paper_row: str | None = None


def _quality(q: QualityRecord) -> Quality:
    harness = f"{q.harness_name} {q.harness_version or ''}".strip() if q.harness_name else None
    return Quality(
        q.provenance, q.base_model, q.base_model_revision, q.task, q.metric, q.higher_is_better, q.value,
        q.dense_value, q.relative_loss, q.shots, q.tokens, harness, q.arxiv, q.paper_table, q.measured_by, q.note,
        q.eval_length, tuple(q.tasks_averaged or ()), q.recovery, q.calibration, q.paper_row,
    )  # fmt: skip


@dataclass(frozen=True)
class RunDetail:
    model: str
    weights: str
    environment_key: str
    environment: dict[str, Any]
    parameters: int
    nonzero_parameters: int
    dense_parameters: int
    weight_bytes: int
    num_layers: int
    peak_memory_bytes: int | None
    effects: list[dict[str, Any]]
    gemms: list[dict[str, Any]]
    latency: list[Row]
    quality: list[Quality]
    calibration: dict[str, Any] | None = None
    """spec.results.CalibrationRecord as JSON: the calibration data used and its seconds; None if none was needed."""
    checkpoint: dict[str, Any] | None = None
    """spec.results.CheckpointRecord as JSON: the submitted folder, its base and each weights file's sha256."""
    stand_in: str | None = None
    """Random weights: the shape stand-in selection that pruned in place of the point's own."""
    id: int | None = None
    """The registry's run id (`prunereg runs retire`)."""
    created_at: datetime | None = None
    retired_at: datetime | None = None
    """When `prunereg runs retire` hid the run from fronts, bands and exports; None: it is shown."""
    retired_why: str | None = None


@dataclass(frozen=True)
class PointDetail:
    name: str
    description: str
    params: dict[str, Any]
    claims: list[Quality]
    runs: list[RunDetail]
    """The runs the leaderboard shows."""
    retired: list[RunDetail] = field(default_factory=list)
    """Runs retired with `prunereg runs retire`, each with its reason; kept, never ranked or exported."""

    @property
    def disagreements(self) -> list[list[Quality]]:
        """Claims of one base model, task, protocol and budget (one-shot or with recovery) that give other values,
        e.g. a method's own table and a later paper's re-run: shown side by side, none chosen."""
        same: dict[tuple[str, str, bool], list[Quality]] = defaultdict(list)
        for q in self.claims:
            same[(q.base_model, claim_task(q), q.recovery is not None)].append(q)
        return [group for group in same.values() if len({(q.value, q.dense_value) for q in group}) > 1]


@dataclass(frozen=True)
class SubmissionDetail:
    spec_hash: str
    schema_version: int
    created_at: datetime
    family: str
    effects: list[dict[str, Any]]
    points: list[PointDetail]
    spec_json: str


@dataclass(frozen=True)
class MethodDetail:
    summary: MethodSummary
    venue: str | None
    license: str
    description: str
    submissions: list[SubmissionDetail]
    """Newest first."""


def method_detail(engine: Engine, slug: str, rows: list[Row] | None = None) -> MethodDetail:
    """Everything the method page shows; pass `rows` to reuse an already computed leaderboard."""
    rows = leaderboard_rows(engine) if rows is None else rows
    by_run: dict[int | None, list[Row]] = defaultdict(list)
    for row in rows:
        if row.method_slug == slug:
            by_run[row.run_id].append(row)
    with Session(engine) as session:
        to_points = selectinload(MethodRecord.submissions).selectinload(SubmissionRecord.operating_points)
        everything = to_points.selectinload(OperatingPointRecord.runs).selectinload(Run.quality)
        with_claims = to_points.selectinload(OperatingPointRecord.quality_results)
        stmt = select(MethodRecord).where(MethodRecord.slug == slug).options(everything, with_claims)
        method = session.scalars(stmt).one_or_none()
        if method is None:
            raise KeyError(f"no method {slug!r} in the registry")
        submissions = []
        for sub in sorted(method.submissions, key=lambda s: (s.created_at, s.id), reverse=True):
            spec = json.loads(sub.spec)
            points = []
            for p in sub.operating_points:
                runs = [
                    RunDetail(
                        r.model,
                        r.weights,
                        r.environment_key,
                        dict(r.environment),
                        r.parameters,
                        r.nonzero_parameters,
                        r.dense_parameters,
                        r.weight_bytes,
                        r.num_layers,
                        r.peak_memory_bytes,
                        list(r.effects),
                        list(r.gemms or []),
                        by_run[r.id],
                        [_quality(q) for q in r.quality],
                        r.calibration,
                        r.checkpoint,
                        r.stand_in,
                        r.id,
                        r.created_at,
                        r.retired_at,
                        r.retired_why,
                    )  # fmt: skip
                    for r in p.runs
                ]
                claims = [_quality(q) for q in p.quality_results if q.run_id is None]
                shown = [r for r in runs if r.retired_at is None]
                retired = [r for r in runs if r.retired_at is not None]
                points.append(PointDetail(p.name, p.description, dict(p.params), claims, shown, retired))
            submissions.append(
                SubmissionDetail(
                    sub.spec_hash,
                    sub.schema_version,
                    sub.created_at,
                    spec.get("family", method.family),
                    list(spec.get("effects", [])),
                    points,
                    json.dumps(spec, indent=2, ensure_ascii=False),
                )  # fmt: skip
            )
        return MethodDetail(_summary(method), method.venue, method.license, method.description, submissions)


def stored_points(
    engine: Engine, spec_hash: str, model: str, weights: str, environment_key: str, scenarios: list[str]
) -> set[str]:
    """Operating points of this submission already measured here in every one of `scenarios` (for resuming),
    by runs that are not retired: a point whose runs are all retired is measured again."""
    stmt = (
        select(OperatingPointRecord.name, LatencyMeasurement.scenario)
        .join(Run.operating_point)
        .join(OperatingPointRecord.submission)
        .join(Run.latency)
        .where(
            SubmissionRecord.spec_hash == spec_hash,
            Run.model == model,
            Run.weights == weights,
            Run.environment_key == environment_key,
            LatencyMeasurement.scenario.in_(scenarios),
            Run.retired_at.is_(None),
        )
    )
    found: dict[str, set[str]] = defaultdict(set)
    with Session(engine) as session:
        for point, scenario in session.execute(stmt):
            found[point].add(scenario)
    return {point for point, measured in found.items() if measured >= set(scenarios)}


@dataclass(frozen=True)
class Failure:
    """A scenario of an operating point that could not be measured (registry.schema.FailedMeasurement), with its method.

    `superseded`: a run of the same point, model, device, dtype and execution mode measured this scenario
    afterwards; the record is kept, and the leaderboard shows the run instead of the failure.
    """

    method_slug: str
    method_name: str
    family: str
    spec_hash: str
    operating_point: str
    model: str
    weights: str | None
    device_name: str
    dtype: str
    execution_mode: str
    environment_key: str | None
    scenario: str
    phase: str
    batch_size: int
    seq_len: int
    stage: str
    kind: str
    reason: str
    node: str | None
    created_at: datetime
    superseded: bool = False

    @property
    def group(self) -> GroupKey:
        """The leaderboard group its row would have been in."""
        return GroupKey(self.model, self.device_name, self.dtype, self.execution_mode, self.scenario)


def failures(engine: Engine) -> list[Failure]:
    """Every failed measurement, oldest first, each marked superseded where a later run measured what it could not."""
    stmt = (
        select(FailedMeasurement, OperatingPointRecord, SubmissionRecord, MethodRecord)
        .join(FailedMeasurement.operating_point)
        .join(OperatingPointRecord.submission)
        .join(SubmissionRecord.method)
        .order_by(FailedMeasurement.created_at, FailedMeasurement.id)
    )
    measured = (
        select(
            Run.operating_point_id,
            Run.model,
            Run.device_name,
            Run.dtype,
            Run.execution_mode,
            LatencyMeasurement.scenario,
            Run.created_at,
        )  # fmt: skip
        .join(Run.latency)
        .where(Run.operating_point_id.in_(select(FailedMeasurement.operating_point_id)))
    )
    with Session(engine) as session:
        latest: dict[tuple, datetime] = {}
        for *key, created in session.execute(measured):
            latest[tuple(key)] = max(created, latest.get(tuple(key), created))
        out = []
        for f, point, submission, method in session.execute(stmt):
            last_run = latest.get((f.operating_point_id, f.model, f.device_name, f.dtype, f.execution_mode, f.scenario))
            out.append(
                Failure(
                    method.slug,
                    method.name,
                    method.family,
                    submission.spec_hash,
                    point.name,
                    f.model,
                    f.weights,
                    f.device_name,
                    f.dtype,
                    f.execution_mode,
                    f.environment_key,
                    f.scenario,
                    f.phase,
                    f.batch_size,
                    f.seq_len,
                    f.stage,
                    f.kind,
                    f.reason,
                    f.node,
                    f.created_at,
                    superseded=last_run is not None and last_run >= f.created_at,
                )  # fmt: skip
            )
        return out


def method_fingerprints(engine: Engine) -> dict[str, tuple]:
    """Per method slug, how many records of each kind it has stored and the newest one's id: what changes when
    anything is ingested for it, or one of its runs is retired. Records are otherwise only ever added, so an unchanged
    fingerprint means an unchanged method."""
    method = select(MethodRecord.slug).join(MethodRecord.submissions)
    to_point = method.join(SubmissionRecord.operating_points)
    counted = {
        "submissions": method,
        "operating_points": to_point,
        "runs": to_point.join(OperatingPointRecord.runs),
        "quality_results": to_point.join(OperatingPointRecord.quality_results),
        "latency_measurements": to_point.join(OperatingPointRecord.runs).join(Run.latency),
        "failed_measurements": to_point.join(OperatingPointRecord.failures),
    }
    ids = {"submissions": SubmissionRecord.id, "operating_points": OperatingPointRecord.id, "runs": Run.id,
           "quality_results": QualityRecord.id, "latency_measurements": LatencyMeasurement.id,
           "failed_measurements": FailedMeasurement.id}  # fmt: skip
    found: dict[str, list] = defaultdict(list)
    with Session(engine) as session:
        for table, by_method in counted.items():
            stmt = by_method.add_columns(func.count(ids[table]), func.max(ids[table])).group_by(MethodRecord.slug)
            for slug, count, newest in session.execute(stmt):
                found[slug].append((table, count, newest))
        retired = counted["runs"].add_columns(func.count(Run.retired_at), func.max(Run.retired_at))
        for slug, count, newest in session.execute(retired.group_by(MethodRecord.slug)):
            found[slug].append(("retired runs", count, newest))  # the one record that changes: a run retired later
    return {slug: tuple(parts) for slug, parts in found.items()}


def is_empty(engine: Engine) -> bool:
    """No method stored yet: a fresh registry, or a --db naming another one than meant."""
    with Session(engine) as session:
        return session.scalars(select(MethodRecord.id).limit(1)).first() is None
