"""`prunereg evaluate`: load spec -> build model -> apply adapter -> measure -> result.

The whole pipeline in one short function; each stage lives in its folder. The caller ingests
the result into the registry, so a failure anywhere here writes nothing.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from functools import partial

import torch

from prunereg.adapters import get_adapter
from prunereg.adapters.embedded import EVAL_SPLIT
from prunereg.adapters.fingerprint import environment, model_stats
from prunereg.adapters.latency import Workload, measure_pair, summary
from prunereg.adapters.models import LoadedModel, load_model
from prunereg.adapters.quality import encode, mean_cross_entropy
from prunereg.adapters.trace import check_declaration
from prunereg.spec.catalog import ModelArchitecture, Phase, Scenario, devices, models
from prunereg.spec.checks import point_misfit
from prunereg.spec.costmodel import estimate
from prunereg.spec.effects import resolve
from prunereg.spec.results import Environment, EvaluationResult, ExecutionMode, GemmTrace, LatencyResult, PointResult, QualityResult
from prunereg.spec.submission import Submission

TRACE_SEQ_LEN = 256
"""Prompt length of the traced prefill that checks declared effects (whole 64-token blocks)."""


class EvaluationError(Exception):
    """A problem with the request (model, device, operating point), reported as one line."""


def evaluate(
    submission: Submission,
    model_name: str,
    device_name: str,
    scenarios: tuple[Scenario, ...],
    warmup: int = 3,
    repeats: int = 15,
    mode: ExecutionMode = "eager",
    only: set[str] | None = None,
    on_step: Callable[[str], None] = lambda _: None,
    stored: Callable[[str, str, Environment], set[str]] = lambda model, weights, env: set(),
    store: Callable[[EvaluationResult], None] = lambda partial: None,
) -> EvaluationResult:
    """Measure every operating point not `stored` yet, handing each to `store` as soon as it is done.

    Storing point by point makes an evaluation resumable: killed halfway, it leaves the finished
    points in the registry (each in its own transaction, never a partial one) and a rerun measures
    only the rest. The result returned holds the points measured by this call; `only` limits it
    to the named operating points.
    """
    device = torch.device(device_name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise EvaluationError("--device cuda asked for, but torch sees no CUDA device")
    if mode != "eager" and device.type != "cuda":
        raise EvaluationError(f"--mode {mode} captures CUDA Graphs and needs --device cuda")
    unknown = sorted((only or set()) - {p.name for p in submission.adapter.operating_points})
    if unknown:
        raise EvaluationError(f"no operating point named {', '.join(map(repr, unknown))} in this submission")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    loaded = load_checked(submission, model_name, device_name, dtype)
    env = environment(device, dtype, mode)
    if env.device_profile is None:
        raise EvaluationError(f"no roofline profile for '{env.device_name}': add one to spec/data/devices.json")
    roofline = partial(estimate, loaded.architecture, devices()[env.device_profile], dtype_bytes=dtype.itemsize)
    quality = HeldOutQuality(loaded) if loaded.weights == "trained" and loaded.tokenizer else None
    adapter = get_adapter(submission.adapter.name)
    done = stored(loaded.name, loaded.weights, env)
    result = partial(
        EvaluationResult, spec_hash=submission.spec_hash(), model=loaded.name, weights=loaded.weights, environment=env,
        dense_stats=model_stats(loaded.model),
    )
    points = []
    for point in submission.adapter.operating_points:
        if only and point.name not in only:
            continue
        if point.name in done:
            on_step(f"{point.name} · already in the registry")
            continue
        pruned = adapter.apply(copy.deepcopy(loaded.model), point.params)
        effects = resolve(submission.effects, point.params)
        on_step(f"{point.name} · tracing GEMMs")
        gemms = checked_gemms(loaded, pruned, effects, point.name)
        latency = []
        for scenario in scenarios:
            on_step(f"{point.name} · {scenario.name}")
            timing = measure_pair(loaded.model, pruned, scenario, warmup, repeats, mode)
            latency.append(
                LatencyResult(
                    scenario=scenario, samples=timing.pruned, **summary(timing.pruned),
                    dense_median=summary(timing.dense)["median"],
                    theoretical=roofline(scenario, effects).time_ms, theoretical_dense=roofline(scenario, ()).time_ms,
                    execution=timing.execution, fallback=timing.fallback,
                    gpu_before=timing.gpu_before, gpu_after=timing.gpu_after,
                )
            )
        peak = activation_peak(pruned, max(scenarios, key=_size)) if device.type == "cuda" else None
        measured = PointResult(
            operating_point=point.name, effects=effects, gemms=gemms, stats=model_stats(pruned, peak), latency=latency,
            quality=[quality.of(pruned)] if quality else [],
        )
        del pruned
        store(result(points=[measured]))
        points.append(measured)
    return result(points=points)


def load_checked(submission: Submission, model_name: str, device_name: str, dtype: torch.dtype) -> LoadedModel:
    """The model to prune, once every operating point is known to fit it."""
    if model_name in models():
        check_fit(submission, models()[model_name])  # before building a model that may be large
    try:
        loaded = load_model(model_name, device_name, dtype)
    except ValueError as err:
        raise EvaluationError(str(err)) from None
    check_fit(submission, loaded.architecture)
    return loaded


def checked_gemms(loaded: LoadedModel, pruned, effects, point_name: str) -> list[GemmTrace]:
    """The GEMMs the pruned model runs in one traced prefill; refuses a declaration they contradict."""
    seq_len = min(TRACE_SEQ_LEN, loaded.architecture.max_position_embeddings // 64 * 64)
    scenario = Scenario(phase=Phase.prefill, batch_size=1, seq_len=seq_len)
    rows, mismatches = check_declaration(loaded.model, pruned, loaded.architecture, scenario, effects)
    if mismatches:
        raise EvaluationError(f"operating point '{point_name}' does not do what the submission declares: " + "; ".join(mismatches))
    return [gemm for row in rows for gemm in row.pruned]


class HeldOutQuality:
    """Cross-entropy on the embedded held-out split; the dense value is computed once."""

    def __init__(self, loaded: LoadedModel):
        self.ids, self.bos = encode(loaded.tokenizer, EVAL_SPLIT), loaded.tokenizer.bos_token_id
        self.dense, _ = mean_cross_entropy(loaded.model, self.ids, self.bos)

    def of(self, pruned) -> QualityResult:
        loss, tokens = mean_cross_entropy(pruned, self.ids, self.bos)
        return QualityResult(
            task="heldout-ppl", metric="cross_entropy", value=loss, dense_value=self.dense, higher_is_better=False,
            tokens=tokens,
        )


def check_fit(submission: Submission, arch: ModelArchitecture) -> None:
    for point in submission.adapter.operating_points:
        problem = point_misfit(point.params, arch)
        if problem:
            raise EvaluationError(f"operating point '{point.name}' does not fit {arch.name}: {problem}")


def _size(scenario: Scenario) -> int:
    return scenario.batch_size * scenario.seq_len


def activation_peak(model, scenario: Scenario) -> int:
    """The activation and KV-cache peak of one scenario above the resident weights, from the CUDA allocator."""
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    Workload(model, scenario).step()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base
