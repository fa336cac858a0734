"""Read the registry into plain, frozen records for the leaderboard and the CLI.

The site never sees ORM objects: these records are everything it may show, so the schema can
move under them. A leaderboard row is one latency measurement with its method, environment,
measured quality loss and its place on the Pareto front of its group.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Literal, NamedTuple

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from prunereg.spec.taxonomy import FAMILY_LABELS

from .pareto import dominance_rank
from .schema import LatencyMeasurement, MethodRecord, OperatingPointRecord, QualityRecord, Run, SubmissionRecord

SpeedupKind = Literal["measured", "theoretical"]
_LABELS = {family.value: label for family, label in FAMILY_LABELS.items()}


def family_label(family: str) -> str:
    return _LABELS.get(family, family)


NOISY_SPREAD = 0.03
"""p80/p20 − 1 above which a latency is flagged as noisy on the leaderboard."""


class GroupKey(NamedTuple):
    """Rows are only comparable inside one group: same model, device, dtype, execution mode and scenario."""

    model: str
    device_name: str
    dtype: str
    execution_mode: str
    scenario: str


@dataclass(frozen=True)
class Row:
    method_slug: str
    method_name: str
    family: str
    family_label: str
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
    dense_median_ms: float
    speedup: float
    theoretical_speedup: float
    realization: float
    spread: float
    quality_loss: float | None
    quality_task: str | None
    quality_metric: str | None
    kernel_note: str | None = None
    execution: str = "eager"
    """How the steps really ran: `execution_mode`, or eager when `fallback` says why that mode failed."""
    fallback: str | None = None
    gpu_before: dict[str, Any] | None = None
    """spec.results.GpuState as JSON, read before the timed repeats (CUDA with NVML only)."""
    gpu_after: dict[str, Any] | None = None
    pareto: bool = False
    dominated_by: int | None = None

    @property
    def noisy(self) -> bool:
        """A median whose p80/p20 spread exceeds NOISY_SPREAD: shown flagged, not hidden."""
        return self.spread > NOISY_SPREAD

    @property
    def gpu_change(self) -> str | None:
        """'1980→1755 MHz, 41→47 °C; sw_power_cap': clocks that dropped or a hot GPU explain an odd number."""
        if self.gpu_before is None and self.gpu_after is None:
            return None
        before, after = self.gpu_before or {}, self.gpu_after or {}

        def change(field: str) -> str:
            return f"{before.get(field, '?')}→{after.get(field, '?')}"

        reasons = sorted({*before.get("clock_event_reasons", []), *after.get("clock_event_reasons", [])})
        text = f"{change('sm_clock_mhz')} MHz, {change('temperature_c')} °C"
        return f"{text}; {', '.join(reasons)}" if reasons else text

    @property
    def group(self) -> GroupKey:
        return GroupKey(self.model, self.device_name, self.dtype, self.execution_mode, self.scenario)

    def sort_key(self) -> tuple:
        return (
            self.model, self.device_name, self.execution_mode, self.phase != "prefill", self.batch_size,
            self.seq_len, self.method_slug, self.operating_point, self.weights, self.environment_key, self.spec_hash,
        )  # fmt: skip


class _Axes(NamedTuple):
    speedup: float
    quality_loss: float


def _mark_pareto(rows: list[Row], speedup: SpeedupKind) -> list[Row]:
    groups: dict[GroupKey, list[int]] = defaultdict(list)
    for i, row in enumerate(rows):
        if row.quality_loss is not None:
            groups[row.group].append(i)
    marked = list(rows)
    for members in groups.values():
        axes = [
            _Axes(rows[i].speedup if speedup == "measured" else rows[i].theoretical_speedup, rows[i].quality_loss)
            for i in members
        ]
        for i, rank in zip(members, dominance_rank(axes)):
            marked[i] = replace(rows[i], pareto=rank == 0, dominated_by=rank)
    return marked


def _first_measured_quality(session: Session) -> dict[int, QualityRecord]:
    """The first measured quality figure of each run: the harness lists its primary task first."""
    first: dict[int, QualityRecord] = {}
    stmt = select(QualityRecord).where(QualityRecord.provenance == "measured").order_by(QualityRecord.id)
    for quality in session.scalars(stmt):
        first.setdefault(quality.run_id, quality)
    return first


PLAIN_KERNELS = ("dense", "causal (SDPA)", "dense (SDPA)")
"""What every dense model runs too; only other kernels are worth a note on the leaderboard."""


def kernel_note(gemms: list[dict[str, Any]]) -> str | None:
    """How the pruned GEMMs ran when it was not a plain dense kernel, e.g. "masked dense" (no speedup expected)."""
    kernels = {g["kernel"] for g in gemms if g["kernel"] not in PLAIN_KERNELS and g["gemm"] not in ("router", "other")}
    return ", ".join(sorted(kernels)) or None


def leaderboard_rows(engine: Engine, speedup: SpeedupKind = "measured") -> list[Row]:
    """Every latency measurement as a row, sorted deterministically, with Pareto flags per group."""
    if speedup not in ("measured", "theoretical"):
        raise ValueError(f"speedup must be 'measured' or 'theoretical', not {speedup!r}")
    stmt = (
        select(LatencyMeasurement, Run, OperatingPointRecord, SubmissionRecord, MethodRecord)
        .join(LatencyMeasurement.run)
        .join(Run.operating_point)
        .join(OperatingPointRecord.submission)
        .join(SubmissionRecord.method)
    )
    rows = []
    with Session(engine) as session:
        quality = _first_measured_quality(session)
        for lat, run, point, submission, method in session.execute(stmt):
            q = quality.get(run.id)
            measured = lat.dense_median / lat.median
            theoretical = lat.theoretical_dense / lat.theoretical
            rows.append(
                Row(
                    method_slug=method.slug,
                    method_name=method.name,
                    family=method.family,
                    family_label=family_label(method.family),
                    operating_point=point.name,
                    spec_hash=submission.spec_hash,
                    model=run.model,
                    weights=run.weights,
                    device_name=run.device_name,
                    execution_mode=run.execution_mode,
                    dtype=run.dtype,
                    environment_key=run.environment_key,
                    scenario=lat.scenario,
                    phase=lat.phase,
                    batch_size=lat.batch_size,
                    seq_len=lat.seq_len,
                    median_ms=lat.median,
                    dense_median_ms=lat.dense_median,
                    speedup=measured,
                    theoretical_speedup=theoretical,
                    realization=measured / theoretical,
                    spread=lat.p80 / lat.p20 - 1.0,
                    quality_loss=q.relative_loss if q else None,
                    quality_task=q.task if q else None,
                    quality_metric=q.metric if q else None,
                    kernel_note=kernel_note(run.gemms or []),
                    execution=lat.execution,
                    fallback=lat.fallback,
                    gpu_before=lat.gpu_before,
                    gpu_after=lat.gpu_after,
                )
            )
    rows.sort(key=Row.sort_key)
    return _mark_pareto(rows, speedup)


@dataclass(frozen=True)
class MethodSummary:
    slug: str
    name: str
    family: str
    family_label: str
    authors: list[str]
    paper_title: str
    arxiv: str | None
    url: str | None
    year: int
    submissions: int
    runs: int


def _summary(m: MethodRecord) -> MethodSummary:
    runs = sum(len(p.runs) for s in m.submissions for p in s.operating_points)
    return MethodSummary(
        m.slug, m.name, m.family, family_label(m.family), list(m.authors), m.paper_title,
        m.arxiv, m.url, m.year, len(m.submissions), runs,
    )  # fmt: skip


def methods(engine: Engine) -> list[MethodSummary]:
    """All methods by slug, with how many submissions and runs each has."""
    with Session(engine) as session:
        return [_summary(m) for m in session.scalars(select(MethodRecord).order_by(MethodRecord.slug))]


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
    finetune_tokens: int
    arxiv: str | None
    paper_table: str | None
    measured_by: str | None
    note: str | None


def _quality(q: QualityRecord) -> Quality:
    harness = f"{q.harness_name} {q.harness_version or ''}".strip() if q.harness_name else None
    return Quality(
        q.provenance, q.base_model, q.base_model_revision, q.task, q.metric, q.higher_is_better, q.value,
        q.dense_value, q.relative_loss, q.shots, q.tokens, harness, q.finetune_tokens, q.arxiv, q.paper_table,
        q.measured_by, q.note,
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


@dataclass(frozen=True)
class PointDetail:
    name: str
    description: str
    params: dict[str, Any]
    claims: list[Quality]
    runs: list[RunDetail]


@dataclass(frozen=True)
class SubmissionDetail:
    spec_hash: str
    schema_version: int
    created_at: datetime
    family: str
    family_label: str
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
    by_run: dict[tuple, list[Row]] = defaultdict(list)
    for row in rows:
        if row.method_slug == slug:
            by_run[(row.spec_hash, row.operating_point, row.model, row.weights, row.environment_key)].append(row)
    with Session(engine) as session:
        method = session.scalars(select(MethodRecord).where(MethodRecord.slug == slug)).one_or_none()
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
                        by_run[(sub.spec_hash, p.name, r.model, r.weights, r.environment_key)],
                        [_quality(q) for q in r.quality],
                    )  # fmt: skip
                    for r in p.runs
                ]
                claims = [_quality(q) for q in p.quality_results if q.run_id is None]
                points.append(PointDetail(p.name, p.description, dict(p.params), claims, runs))
            submissions.append(
                SubmissionDetail(
                    sub.spec_hash,
                    sub.schema_version,
                    sub.created_at,
                    spec.get("family", method.family),
                    family_label(spec.get("family", method.family)),
                    list(spec.get("effects", [])),
                    points,
                    json.dumps(spec, indent=2, ensure_ascii=False),
                )  # fmt: skip
            )
        return MethodDetail(_summary(method), method.venue, method.license, method.description, submissions)


def stored_points(
    engine: Engine, spec_hash: str, model: str, weights: str, environment_key: str, scenarios: list[str]
) -> set[str]:
    """Operating points of this submission already measured here in every one of `scenarios` (for resuming)."""
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
        )
    )
    found: dict[str, set[str]] = defaultdict(set)
    with Session(engine) as session:
        for point, scenario in session.execute(stmt):
            found[point].add(scenario)
    return {point for point, measured in found.items() if measured >= set(scenarios)}
