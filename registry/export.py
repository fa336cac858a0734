"""The registry as three flat tables for pandas users: latency rows, quality figures, reported quality x speed.

Flat records (one dict per row, scalar values only) load with `pandas.DataFrame(records)` or
`pandas.read_csv` without any unnesting. Every latency row carries its full provenance: the
method and spec hash, the operating point, the model and weights, and the whole environment
fingerprint spread into `env_*` columns, because a speedup means nothing without the machine,
library versions and dtype it was timed with. It also says how the scenario really ran
(`execution`, and the `fallback` reason when the environment's mode failed) and carries the GPU's
clocks and temperature before and after the repeats (`gpu_before_*`, `gpu_after_*`; empty without
NVML), the kernels the run's GEMMs ran on (`kernels`; what they mean for a speedup is the
leaderboard's to say) and the calibration its selection ran on, with the seconds calibrating and
pruning took (`calibration_*`; empty where the selection needs none), and for a submitted checkpoint
its weights files' sha256 (`checkpoint_sha256`, comma-separated in file order; empty for every other
adapter). Each speedup carries its 95 % paired-bootstrap interval (`speedup_low`, `speedup_high`; empty
without dense samples) and, where it is too noisy to rank, why it is left out of the front (`excluded`);
the JSON export adds the raw samples of both models (`samples`, `dense_samples`, pair i at index i), so
the interval can be recomputed (spec/uncertainty.py). Retired runs (`prunereg runs retire`) are left out
of every table. `run_id` names the run in the registry it came from. The quality table keeps
prunereg's measurements (`provenance` "measured", with the run they belong to) and the claims
reported in submissions ("reported" / "measured-elsewhere", with arXiv id and table) side by side,
never merged. The reported table is the papers' frontier: each claim next to the latency prunereg measured
for its point on its base model's shapes, `quality_provenance` "reported" on every row.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple, TextIO

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from prunereg.spec.results import Environment, GpuState

from .queries import Row, leaderboard_rows, reported_rows
from .schema import LatencyMeasurement, MethodRecord, OperatingPointRecord, QualityRecord, Run, SubmissionRecord

ENV_FIELDS = tuple(Environment.model_fields)
GPU_COLUMNS = tuple(f"gpu_{when}_{f}" for when in ("before", "after") for f in GpuState.model_fields)
CALIBRATION_COLUMNS = ("calibration_dataset", "calibration_tokens", "calibration_seconds")
"""The run's calibration (spec.results.CalibrationRecord): empty where the point's selection needs none."""
LATENCY_COLUMNS = (
    "method_slug", "method_name", "family", "spec_hash", "operating_point", "model", "weights",
    "environment_key", *(f"env_{f}" for f in ENV_FIELDS), "scenario", "phase", "batch_size", "seq_len",
    "run_id", "median_ms", "p20_ms", "p80_ms", "dense_median_ms", "speedup", "speedup_low", "speedup_high",
    "excluded", "theoretical_speedup", "realization",
    "execution", "fallback", *GPU_COLUMNS, "kernels", *CALIBRATION_COLUMNS, "checkpoint_sha256", "stand_in",
    "quality_provenance", "quality_loss", "quality_task", "quality_metric", "pareto", "dominated_by",
)  # fmt: skip
QUALITY_COLUMNS = (
    "method_slug", "method_name", "family", "spec_hash", "operating_point", "provenance", "model", "weights",
    "environment_key", "base_model", "base_model_revision", "task", "metric", "higher_is_better", "value",
    "dense_value", "relative_loss", "shots", "tokens", "harness", "harness_version", "eval_length",
    "tasks_averaged", "recovery_data", "recovery_tokens", "recovery_method", "calibration_data",
    "calibration_sequences", "calibration_length", "arxiv", "paper_table", "paper_row", "measured_by", "note",
)  # fmt: skip


def _gpu(when: str, state: dict[str, Any] | None) -> dict[str, Any]:
    """One GPU reading as flat columns; its clock-event reasons joined by commas."""
    state = state or {}
    return {f"gpu_{when}_{f}": ",".join(v) if isinstance(v := state.get(f), list) else v for f in GpuState.model_fields}


def _calibration(record: dict[str, Any] | None) -> dict[str, Any]:
    record = record or {}
    return {f"calibration_{f}": record.get(f) for f in ("dataset", "tokens", "seconds")}


def latency_record(r: Row) -> dict[str, Any]:
    """One leaderboard row as a flat dict with `LATENCY_COLUMNS`."""
    return {
        "method_slug": r.method_slug, "method_name": r.method_name, "family": r.family, "spec_hash": r.spec_hash,
        "operating_point": r.operating_point, "model": r.model, "weights": r.weights,
        "environment_key": r.environment_key, **{f"env_{f}": r.environment.get(f) for f in ENV_FIELDS},
        "scenario": r.scenario, "phase": r.phase, "batch_size": r.batch_size, "seq_len": r.seq_len,
        "run_id": r.run_id, "median_ms": r.median_ms, "p20_ms": r.p20_ms, "p80_ms": r.p80_ms,
        "dense_median_ms": r.dense_median_ms, "speedup": r.speedup, "speedup_low": r.speedup_low,
        "speedup_high": r.speedup_high, "excluded": r.excluded, "theoretical_speedup": r.theoretical_speedup,
        "realization": r.realization,
        "execution": r.execution, "fallback": r.fallback, **_gpu("before", r.gpu_before),
        **_gpu("after", r.gpu_after), "kernels": ",".join(r.kernels), **_calibration(r.calibration),
        "checkpoint_sha256": ",".join(f["sha256"] for f in r.checkpoint["files"]) if r.checkpoint else None,
        "stand_in": r.stand_in,
        "quality_provenance": None if r.quality_loss is None else "measured",
        "quality_loss": r.quality_loss, "quality_task": r.quality_task, "quality_metric": r.quality_metric,
        "pareto": r.pareto, "dominated_by": r.dominated_by,
    }  # fmt: skip


def latency_records(engine: Engine, samples: bool = False) -> list[dict[str, Any]]:
    """Every latency row, in the leaderboard's order, as a flat dict with `LATENCY_COLUMNS`; with `samples`, also
    the raw `samples` and `dense_samples` (lists: JSON only)."""
    return list(iter_latency_records(engine, samples))


def iter_latency_records(engine: Engine, samples: bool = False) -> Iterator[dict[str, Any]]:
    """`latency_records` one at a time, so a writer holds one flat record, not the whole table of them."""
    rows = leaderboard_rows(engine)
    raw = _samples(engine) if samples else {}
    for r in rows:
        record = latency_record(r)
        if samples:
            record.update(zip(("samples", "dense_samples"), raw[(r.run_id, r.scenario)]))
        yield record


def _samples(engine: Engine) -> dict[tuple[int | None, str], tuple[list[float], list[float] | None]]:
    """(pruned, dense) samples of every latency of a run that is not retired, by run id and scenario."""
    stmt = (
        select(LatencyMeasurement.run_id, LatencyMeasurement.scenario, LatencyMeasurement.samples,
               LatencyMeasurement.dense_samples)
        .join(LatencyMeasurement.run)
        .where(Run.retired_at.is_(None))
    )  # fmt: skip
    with Session(engine) as session:
        return {(run, scenario): (pruned, dense) for run, scenario, pruned, dense in session.execute(stmt)}


class _RunKey(NamedTuple):
    model: str
    weights: str
    environment_key: str


def quality_records(engine: Engine) -> list[dict[str, Any]]:
    """Every quality figure, measured (by a run that is not retired) and reported, as a flat dict with
    `QUALITY_COLUMNS`."""
    stmt = (
        select(
            QualityRecord,
            OperatingPointRecord,
            SubmissionRecord,
            MethodRecord,
            Run.id,
            Run.model,
            Run.weights,
            Run.environment_key,
        )  # fmt: skip
        .join(QualityRecord.operating_point)
        .join(OperatingPointRecord.submission)
        .join(SubmissionRecord.method)
        .outerjoin(QualityRecord.run)
        .where(Run.retired_at.is_(None))
    )
    out = []
    with Session(engine) as session:
        for q, point, sub, method, run_id, model, weights, environment_key in session.execute(stmt):
            run = None if run_id is None else _RunKey(model, weights, environment_key)
            out.append({
                "method_slug": method.slug, "method_name": method.name, "family": method.family,
                "spec_hash": sub.spec_hash, "operating_point": point.name, "provenance": q.provenance,
                "model": run.model if run else None, "weights": run.weights if run else None,
                "environment_key": run.environment_key if run else None, "base_model": q.base_model,
                "base_model_revision": q.base_model_revision, "task": q.task, "metric": q.metric,
                "higher_is_better": q.higher_is_better, "value": q.value, "dense_value": q.dense_value,
                "relative_loss": q.relative_loss, "shots": q.shots, "tokens": q.tokens, "harness": q.harness_name,
                "harness_version": q.harness_version, "eval_length": q.eval_length,
                "tasks_averaged": ",".join(q.tasks_averaged or ()) or None,
                **{f"recovery_{f}": (q.recovery or {}).get(f) for f in ("data", "tokens", "method")},
                **{f"calibration_{f}": (q.calibration or {}).get(f) for f in ("data", "sequences", "length")},
                "arxiv": q.arxiv, "paper_table": q.paper_table, "paper_row": q.paper_row,
                "measured_by": q.measured_by, "note": q.note,
            })  # fmt: skip
    key = ("method_slug", "spec_hash", "operating_point", "provenance", "model", "weights", "environment_key",
           "base_model", "task", "metric")  # fmt: skip
    return sorted(out, key=lambda rec: tuple("" if rec[k] is None else str(rec[k]) for k in key))


REPORTED_COLUMNS = (
    *(c for c in LATENCY_COLUMNS if not c.startswith(("quality_", "pareto", "dominated_by"))),
    "quality_provenance", "quality_loss", "reported_task", "reported_value", "reported_dense_value", "arxiv",
    "paper_table", "paper_row", "recovery_data", "recovery_tokens", "recovery_method", "pareto", "dominated_by",
)  # fmt: skip


def reported_records(engine: Engine) -> list[dict[str, Any]]:
    """Reported quality x measured speed (queries.reported_rows, recovery claims included and marked), one row per
    claim and latency measurement, with `REPORTED_COLUMNS`; `pareto` is within the claim's task group, one-shot and
    recovered claims ranked together."""
    out = []
    for r in reported_rows(engine, recovery=True):
        record = latency_record(r)
        out.append({
            **{c: record[c] for c in REPORTED_COLUMNS if c in record},
            "quality_provenance": "reported", "reported_task": r.task, "reported_value": r.value,
            "reported_dense_value": r.dense_value, "arxiv": r.arxiv, "paper_table": r.paper_table,
            "paper_row": r.paper_row, **{f"recovery_{f}": (r.recovery or {}).get(f) for f in ("data", "tokens", "method")},
        })  # fmt: skip
    return out


TABLES = {
    "latency": (LATENCY_COLUMNS, latency_records),
    "quality": (QUALITY_COLUMNS, quality_records),
    "reported": (REPORTED_COLUMNS, reported_records),
}
"""`latency` carries only prunereg's measured quality; `reported` joins the papers' claims with measured latency."""


def write_csv(engine: Engine, table: str, stream: TextIO) -> None:
    """One table as CSV with a header row, each record written as it is made: `pandas.read_csv`."""
    columns, records = TABLES[table]
    writer = csv.DictWriter(stream, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for record in iter_latency_records(engine) if table == "latency" else records(engine):
        writer.writerow(record)


def export_csv(engine: Engine, table: str = "latency") -> str:
    """`write_csv` into a string."""
    buffer = io.StringIO()
    write_csv(engine, table, buffer)
    return buffer.getvalue()


def write_json(engine: Engine, tables: Sequence[str], stream: TextIO) -> None:
    """{"latency": [...], "quality": [...], "reported": [...]} (the tables asked for), written record by record,
    byte for byte what `json.dumps(data, indent=1, ensure_ascii=False)` writes: `pandas.DataFrame(data["latency"])`.

    The latency records carry their raw samples too (`latency_records(samples=True)`)."""
    stream.write("{")
    for i, table in enumerate(tables):
        records = iter_latency_records(engine, samples=True) if table == "latency" else iter(TABLES[table][1](engine))
        stream.write(("," if i else "") + f"\n {json.dumps(table, ensure_ascii=False)}: [")
        first = True
        for record in records:
            text = json.dumps(record, indent=1, ensure_ascii=False).replace("\n", "\n  ")
            stream.write(("\n  " if first else ",\n  ") + text)
            first = False
        stream.write("]" if first else "\n ]")
    stream.write("\n}\n" if tables else "}\n")


def export_json(engine: Engine, tables: Sequence[str] = tuple(TABLES)) -> str:
    """`write_json` into a string."""
    buffer = io.StringIO()
    write_json(engine, tables, buffer)
    return buffer.getvalue()
