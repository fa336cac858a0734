"""Shared test data: a valid submission, a plausible evaluation of it, rows and GPU readings, built by hand.

`make_submission` and `make_result` return real pydantic objects (validated as contributors'
files and the harness's output are), so tests exercise the same contracts as production.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prunereg.registry.ingest import ingest
from prunereg.registry.queries import Row
from prunereg.spec.catalog import Phase, Scenario, models
from prunereg.spec.effects import resolve
from prunereg.spec.results import (
    CalibrationRecord,
    Environment,
    EvaluationResult,
    GpuState,
    LatencyResult,
    ModelStats,
    PointResult,
    QualityResult,
)
from prunereg.spec.submission import OperatingPoint, Submission
from prunereg.spec.taxonomy import LAYER_GEMMS

DEFAULT_POINTS: dict[str, dict[str, dict[str, Any]]] = {
    "layer_drop": {"drop-25": {"sparsity": 0.25, "seed": 0}, "drop-50": {"sparsity": 0.5, "seed": 0}},
    "width": {
        "width-25": {"attention_sparsity": 0.25, "mlp_sparsity": 0.25},
        "width-50": {"attention_sparsity": 0.5, "mlp_sparsity": 0.5},
    },
    "dense": {"dense": {}},
}
DEFAULT_FAMILY = {"layer_drop": "static_depth", "width": "static_width", "dense": "dense"}


def default_effects(adapter: str) -> list[dict[str, Any]]:
    """The effects each built-in adapter really has, with fractions taken from the point's params."""
    if adapter == "layer_drop":
        fraction = {"param": "sparsity"}
        return [
            {"gemm": g.value, "dimension": "M", "mode": "static", "granularity": "layer", "fraction": fraction}
            for g in LAYER_GEMMS
        ]
    if adapter == "width":
        attention = {"param": "attention_sparsity"}
        mlp = {"param": "mlp_sparsity"}
        return [
            {"gemm": "qkv_proj", "dimension": "N", "mode": "static", "granularity": "kv_group", "fraction": attention},
            {"gemm": "o_proj", "dimension": "K", "mode": "static", "granularity": "kv_group", "fraction": attention},
            {"gemm": "gate_up_proj", "dimension": "N", "mode": "static", "granularity": "channel", "fraction": mlp},
            {"gemm": "down_proj", "dimension": "K", "mode": "static", "granularity": "channel", "fraction": mlp},
        ]
    return []


def make_submission(
    slug: str = "shortgpt-test",
    *,
    name: str | None = None,
    adapter: str = "layer_drop",
    family: str | None = None,
    points: Mapping[str, dict[str, Any]] | None = None,
    effects: list[dict[str, Any]] | None = None,
    claims: list[dict[str, Any]] | None = None,
    authors: list[str] | None = None,
    description: str = "Removes the decoder layers whose output changes the residual stream least.",
    paper: dict[str, Any] | None = None,
) -> Submission:
    """A valid submission; `claims=None` gives one reported claim on the first point, `[]` none."""
    points = dict(DEFAULT_POINTS[adapter] if points is None else points)
    first = next(iter(points))
    if claims is None:
        claims = [
            {
                "base_model": "llama-2-7b",
                "operating_point": first,
                "task": "wikitext2",
                "metric": "perplexity",
                "higher_is_better": False,
                "value": 18.0,
                "dense_value": 6.0,
                "eval_length": 2048,
                "provenance": {
                    "source": "reported",
                    "arxiv": "9999.00001v1",
                    "table": "Table 3",
                    "row": "Test method 25% | 18.0",
                },
            }
        ]
    return Submission.model_validate(
        {
            "schema_version": 1,
            "method": {
                "slug": slug,
                "name": name or slug.replace("-", " ").title(),
                "authors": authors or ["Ada Example", "Bo Test"],
                "paper": paper or {"title": "A made-up paper for tests", "arxiv": "9999.00001", "year": 2024},
                "license": "unknown",
                "description": description,
            },
            "family": family or DEFAULT_FAMILY[adapter],
            "effects": default_effects(adapter) if effects is None else effects,
            "adapter": {
                "name": adapter,
                "operating_points": [{"name": n, "params": p} for n, p in points.items()],
            },
            "quality_claims": claims,
        }
    )


def make_environment(**overrides: Any) -> Environment:
    fields = {
        "device": "cuda",
        "device_name": "NVIDIA H200",
        "device_profile": "h200",
        "driver": "570.86",
        "python": "3.12.3",
        "torch": "2.11.0",
        "transformers": "5.17.0",
        "prunereg": "0.1.0",
        "git_revision": "0123abcd",
        "dtype": "bfloat16",
        "threads": 16,
    }
    return Environment(**{**fields, **overrides})


DEFAULT_SCENARIOS = (
    Scenario(phase=Phase.prefill, batch_size=1, seq_len=256),
    Scenario(phase=Phase.decode, batch_size=1, seq_len=256),
)


def stats(parameters: int, num_layers: int = 8) -> ModelStats:
    return ModelStats(
        parameters=parameters, nonzero_parameters=parameters, weight_bytes=2 * parameters, num_layers=num_layers
    )


def cross_entropy(loss: float, dense: float = 3.0) -> QualityResult:
    """A held-out cross-entropy whose relative loss against `dense` is `loss`."""
    return QualityResult(
        task="heldout-ppl", metric="cross_entropy", value=dense * (1 + loss), dense_value=dense,
        higher_is_better=False, tokens=65536,
    )  # fmt: skip


def calibration_record(point: OperatingPoint, model: str, seconds: float = 1.4) -> CalibrationRecord | None:
    """The record the harness writes for `point` on catalog `model`: its declared calibration, length capped."""
    declared = point.params.calibration_needed()
    if declared is None:
        return None
    length = min(declared.length, models()[model].max_position_embeddings)
    return CalibrationRecord(
        dataset=declared.dataset, sequences=declared.sequences, length=length, seed=declared.seed,
        tokens=declared.sequences * length, seconds=seconds,
    )  # fmt: skip


def make_result(
    submission: Submission,
    *,
    speedups: Mapping[str, float] | None = None,
    theoretical: Mapping[str, float] | None = None,
    losses: Mapping[str, float | None] | None = None,
    scenarios: tuple[Scenario, ...] = DEFAULT_SCENARIOS,
    model: str = "prunereg-mini",
    weights: str = "trained",
    environment: Environment | None = None,
    dense_ms: float = 10.0,
    calibration_seconds: float = 1.4,
    paired: bool = True,
) -> EvaluationResult:
    """An evaluation with the given measured speedup, theoretical speedup and relative loss per point.

    Defaults: point i runs at 1.2 + 0.4*i (dense samples steady, so its interval is about ±2.5 %: ranked; none
    unless `paired`, and then its 5 % p80/p20 spread is too noisy to rank), its
    roofline allows 25 % more, and it loses 2 % + 5 %*i of quality (cross-entropy against a dense 3.0). A loss
    of None means no quality was measured. A point whose selection calibrates gets the record of its declared
    calibration, taking `calibration_seconds`.
    """
    names = [p.name for p in submission.adapter.operating_points]
    speedups = speedups or {n: 1.2 + 0.4 * i for i, n in enumerate(names)}
    theoretical = theoretical or {n: speedups[n] * 1.25 for n in names}
    losses = {n: 0.02 + 0.05 * i for i, n in enumerate(names)} if losses is None else losses
    points = []
    for point in submission.adapter.operating_points:
        s, t, loss = speedups[point.name], theoretical[point.name], losses.get(point.name)
        median = dense_ms / s
        latency = [
            LatencyResult(
                scenario=sc,
                samples=[median * 0.98, median, median * 1.03],
                median=median,
                p20=median * 0.98,
                p80=median * 1.03,
                dense_samples=[dense_ms] * 3 if paired else None,
                dense_median=dense_ms,
                theoretical_dense=dense_ms / 2,
                theoretical=dense_ms / 2 / t,
            )
            for sc in scenarios
        ]
        quality = [] if loss is None else [cross_entropy(loss)]
        points.append(
            PointResult(
                operating_point=point.name,
                effects=resolve(
                    submission.effects, point.params_for(model), models().get(model, models()["prunereg-mini"])
                ),
                stats=stats(int(1e6 / s)),
                latency=latency,
                quality=quality,
                calibration=calibration_record(point, model, calibration_seconds),
            )
        )
    return EvaluationResult(
        spec_hash=submission.spec_hash(),
        model=model,
        weights=weights,
        environment=environment or make_environment(),
        dense_stats=stats(1_000_000),
        points=points,
    )


GPU_BEFORE = GpuState(sm_clock_mhz=1980, memory_clock_mhz=3201, temperature_c=41, power_w=118.5)
GPU_AFTER = GpuState(
    sm_clock_mhz=1755, memory_clock_mhz=3201, temperature_c=47, power_w=655.0, clock_event_reasons=["sw_power_cap"]
)
CAPTURE_ERROR = "graph mode failed on the pruned model: RuntimeError: operation not permitted when stream is capturing"


def in_mode(result: EvaluationResult, mode: str, fallbacks: Mapping[str, str] | None = None) -> EvaluationResult:
    """`result` measured in `mode`, with NVML readings around every scenario; the points named in
    `fallbacks` could not use the mode and ran eagerly, for the reason given."""
    document = result.model_dump(mode="json")
    document["environment"]["execution_mode"] = mode
    for point in document["points"]:
        reason = (fallbacks or {}).get(point["operating_point"])
        for latency in point["latency"]:
            latency.update(
                execution="eager" if reason else mode, fallback=reason,
                gpu_before=GPU_BEFORE.model_dump(), gpu_after=GPU_AFTER.model_dump(),
            )  # fmt: skip
    return EvaluationResult.model_validate(document)


def row(family: str, point: str, speedup: float, loss: float | None, *, method: str | None = None,
        theoretical: float | None = None, device: str = "NVIDIA H200") -> Row:  # fmt: skip
    name = method or family.replace("_", " ").title()
    theoretical = speedup if theoretical is None else theoretical
    return Row(
        method_slug=name.lower().replace(" ", "-"), method_name=name, family=family, operating_point=point,
        spec_hash="0" * 64, model="llama-3.1-8b", weights="trained", device_name=device, execution_mode="eager",
        dtype="bfloat16", environment_key="e" * 16, scenario="prefill-b1-s4096", phase="prefill", batch_size=1,
        seq_len=4096, median_ms=100 / speedup, p20_ms=100 / speedup, p80_ms=101 / speedup, dense_median_ms=100.0,
        speedup=speedup, theoretical_speedup=theoretical, realization=speedup / theoretical,
        quality_loss=loss, quality_task=None if loss is None else "heldout-ppl",
        quality_metric=None if loss is None else "cross_entropy",
        environment={"device_name": device, "dtype": "bfloat16", "execution_mode": "eager"},
    )  # fmt: skip


RECOVERED = {"data": "Alpaca", "method": "LoRA"}


def claim(point: str, value: float, dense: float = 5.0, *, task: str = "wikitext2", **more) -> dict:
    """A paper's WikiText-2 perplexity claim on llama-2-7b (or a zero-shot average), as a submission states it."""
    metric = {"task": task, "metric": "perplexity", "higher_is_better": False, "eval_length": 2048}
    if task == "zero-shot-average":
        metric = {"task": task, "metric": "mean_accuracy", "higher_is_better": True, "shots": 0}
        metric["tasks_averaged"] = ["arc_easy", "piqa"]
    provenance = {"source": "reported", "arxiv": "9999.00002v3", "table": "Table 4", "row": f"{point} | {value}"}
    return {"base_model": "llama-2-7b", "operating_point": point, "value": value, "dense_value": dense,
            "provenance": provenance, **metric, **more}  # fmt: skip


def ingest_measured_and_reported(engine) -> None:
    """Measured quality on the embedded model, and papers' claims joined with llama-2-7b random-weight runs:
    Llama-2-7B has the most one-shot claims (WikiText-2 most of all), LLaMA-7B borrows its latency, and
    one claim includes recovery fine-tuning."""
    depth = make_submission(
        "shortgpt-test",
        claims=[
            claim("drop-25", 6.0), claim("drop-50", 20.0), claim("drop-25", 55.0, 60.0, task="zero-shot-average"),
            claim("drop-25", 7.1, 5.68, base_model="llama-7b"),
        ],
    )  # fmt: skip
    width = make_submission(
        "flap-test", adapter="width", name="FLAP test",
        claims=[claim("width-25", 5.5), claim("width-50", 7.0, recovery=RECOVERED)],
    )  # fmt: skip
    for sub, speedups, losses in (
        (depth, {"drop-25": 1.3, "drop-50": 1.9}, {"drop-25": 0.03, "drop-50": 0.2}),
        (width, {"width-25": 1.1, "width-50": 1.5}, {"width-25": 0.05, "width-50": 0.12}),
    ):
        ingest(engine, sub, make_result(sub, speedups=speedups, losses=losses))
        timed = {p: s + 0.1 for p, s in speedups.items()}
        ingest(engine, sub, make_result(sub, speedups=timed, losses={}, model="llama-2-7b", weights="random"))
