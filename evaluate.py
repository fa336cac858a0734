"""`prunereg evaluate`: load spec -> build model -> apply adapter -> measure -> result.

The whole pipeline in one short function; each stage lives in its folder. The caller ingests
the result into the registry, so a failure anywhere here writes nothing.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from transformers.utils import logging as hf_logging

from prunereg.adapters import get_adapter
from prunereg.adapters.embedded import EVAL_SPLIT
from prunereg.adapters.fingerprint import environment, model_stats
from prunereg.adapters.latency import Workload, measure_pair, summary
from prunereg.adapters.models import load_model
from prunereg.adapters.quality import encode, mean_cross_entropy
from prunereg.spec.catalog import ModelArchitecture, Scenario, devices, models
from prunereg.spec.checks import point_misfit
from prunereg.spec.costmodel import estimate
from prunereg.spec.effects import resolve
from prunereg.spec.results import EvaluationResult, LatencyResult, PointResult, QualityResult
from prunereg.spec.submission import Submission


class EvaluationError(Exception):
    """A problem with the request (model, device, operating point), reported as one line."""


def evaluate(
    submission: Submission,
    model_name: str,
    device_name: str,
    scenarios: tuple[Scenario, ...],
    warmup: int = 3,
    repeats: int = 15,
    on_step: Callable[[str], None] = lambda _: None,
) -> EvaluationResult:
    hf_logging.disable_progress_bar()
    device = torch.device(device_name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise EvaluationError("--device cuda asked for, but torch sees no CUDA device")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if model_name in models():
        check_fit(submission, models()[model_name])  # before building a model that may be large
    try:
        loaded = load_model(model_name, device_name, dtype)
    except ValueError as err:
        raise EvaluationError(str(err)) from None
    arch, dense = loaded.architecture, loaded.model
    check_fit(submission, arch)
    env = environment(device, dtype)
    profile = devices()[env.device_profile] if env.device_profile else None
    eval_ids = None
    if loaded.weights == "trained" and loaded.tokenizer is not None:
        eval_ids, bos = encode(loaded.tokenizer, EVAL_SPLIT), loaded.tokenizer.bos_token_id
        dense_loss, _ = mean_cross_entropy(dense, eval_ids, bos)
    adapter = get_adapter(submission.adapter.name)
    points = []
    for point in submission.adapter.operating_points:
        pruned = adapter.apply(copy.deepcopy(dense), point.params)
        effects = resolve(submission.effects, point.params)
        latency = []
        for scenario in scenarios:
            on_step(f"{point.name} · {scenario.name}")
            dense_ms, pruned_ms = measure_pair(dense, pruned, scenario, warmup, repeats)
            dense_s, pruned_s = summary(dense_ms), summary(pruned_ms)
            if profile is None:
                raise EvaluationError(f"no device profile for '{env.device_name}': add one to spec/data/devices.json")
            dtype_bytes = torch.finfo(dtype).bits // 8
            latency.append(
                LatencyResult(
                    scenario=scenario,
                    samples=pruned_ms,
                    **pruned_s,
                    dense_median=dense_s["median"],
                    theoretical=estimate(arch, profile, scenario, effects, dtype_bytes).time_ms,
                    theoretical_dense=estimate(arch, profile, scenario, (), dtype_bytes).time_ms,
                )
            )
        quality = []
        if eval_ids is not None:
            loss, tokens = mean_cross_entropy(pruned, eval_ids, bos)
            quality.append(
                QualityResult(
                    task="heldout-ppl", metric="cross_entropy", value=loss, dense_value=dense_loss,
                    higher_is_better=False, tokens=tokens,
                )
            )
        stats = model_stats(pruned, peak_memory(pruned, max(scenarios, key=_size)) if device.type == "cuda" else None)
        points.append(PointResult(operating_point=point.name, effects=effects, stats=stats, latency=latency, quality=quality))
        del pruned
    return EvaluationResult(
        spec_hash=submission.spec_hash(),
        model=loaded.name,
        weights=loaded.weights,
        environment=env,
        dense_stats=model_stats(dense),
        points=points,
    )


def check_fit(submission: Submission, arch: ModelArchitecture) -> None:
    for point in submission.adapter.operating_points:
        problem = point_misfit(point.params, arch)
        if problem:
            raise EvaluationError(f"operating point '{point.name}' does not fit {arch.name}: {problem}")


def _size(scenario: Scenario) -> int:
    return scenario.batch_size * scenario.seq_len


def peak_memory(model, scenario: Scenario) -> int:
    """Weights plus the activation and KV-cache peak of the largest scenario, from the CUDA allocator."""
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    Workload(model, scenario).step()
    torch.cuda.synchronize()
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return weights + torch.cuda.max_memory_allocated() - base
