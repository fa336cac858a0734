"""`prunereg evaluate`: the pipeline, one named stage per line.

    check the request -> load the model -> for each operating point still missing:
    apply the adapter -> trace and check the declaration -> time -> score quality -> store

Each stage lives in its folder (adapters/ prunes, harness/ measures); this module only runs them
in order. Every operating point is handed to `store` as soon as it is measured, each in its own
registry transaction, so an evaluation killed halfway leaves whole points behind and a rerun
measures only the ones that are missing.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from transformers import PreTrainedModel

from prunereg.adapters import get_adapter
from prunereg.harness.calibration import calibration_ids
from prunereg.harness.fingerprint import environment, model_stats
from prunereg.harness.latency import MaskedAttentionTimed, Workload, busy, measure_pair, pin_threads
from prunereg.harness.models import LoadedModel, load_model
from prunereg.harness.tasks import QualityMeasure, TaskUnavailable, measure
from prunereg.harness.trace import check_declaration
from prunereg.spec.catalog import ModelArchitecture, Phase, Scenario, devices, models, suite_tasks
from prunereg.spec.costmodel import estimate
from prunereg.spec.effects import ResolvedEffect, resolve
from prunereg.spec.parameters import AdapterParams, CheckpointParams
from prunereg.spec.results import (
    ALIGNMENT_BYTES,
    CalibrationRecord,
    CheckpointRecord,
    Environment,
    EvaluationResult,
    ExecutionMode,
    GemmTrace,
    LatencyResult,
    PointResult,
    Sharding,
    latency_summary,
    unaligned,
)
from prunereg.spec.submission import OperatingPoint, Submission

TRACE_SEQ_LEN = 256
"""Prompt length of the traced prefill that checks declared effects (whole 64-token blocks)."""
GPU_DTYPE = torch.bfloat16
"""The dtype every GPU evaluation runs in (a CPU one in float32)."""


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
    folder: Path | None = None,
    tasks: tuple[str, ...] | None = None,
    max_repeats: int | None = None,
    threads: int | None = None,
    on_warning: Callable[[str], None] = lambda _: None,
    tensor_parallel: int | None = None,
) -> EvaluationResult:
    """Measure every operating point not `stored` yet, handing each to `store` as soon as it is done.

    The result returned holds the points measured by this call; `only` limits the evaluation to
    the named operating points (and only those are checked against the model). `folder` is the
    submission file's folder, which the `checkpoint` adapter's paths are relative to. `tasks` are the
    quality tasks to measure (default: the suite's, spec/catalog.py suite_tasks).

    Against noise: torch's CPU threads are pinned (`threads`, default harness.latency.pin_threads's),
    repeats are added while a speedup's interval is too wide, up to `max_repeats` (default `repeats`:
    none added; never past spec.results.MAX_REPEATS), and a scenario timed on a busy machine is
    reported to `on_warning`; its latency's `timing` records all three.

    `tensor_parallel` N: fused mode sharded over N processes (harness/tensor_parallel.py), one per GPU;
    the model is loaded and pruned on the host, and each point records how it was split (`sharding`).
    """
    device, dtype = check_request(submission, device_name, mode, only, tensor_parallel)
    points = [p for p in submission.adapter.operating_points if not only or p.name in only]
    loaded = load_checked(submission, model_name, "cpu" if tensor_parallel else device_name, dtype, points)
    pin_threads(threads)
    env = environment(device, dtype, mode, tensor_parallel)
    if env.device_profile is None:
        raise EvaluationError(f"no roofline profile for '{env.device_name}': add one to spec/data/devices.json")
    roofline = partial(
        estimate, loaded.architecture, devices()[env.device_profile], dtype_bytes=dtype.itemsize,
        tensor_parallel=tensor_parallel or 1,
    )  # fmt: skip
    ranks = tensor_parallel_ranks(tensor_parallel, device)
    qualities = quality_measures(loaded, suite_tasks(scenarios) if tasks is None else tasks)
    result = partial(
        EvaluationResult, spec_hash=submission.spec_hash(), model=loaded.name, weights=loaded.weights,
        environment=env, dense_stats=model_stats(loaded.model),
    )  # fmt: skip
    done = stored(loaded.name, loaded.weights, env)
    measured = []
    for point in points:
        if point.name in done:
            on_step(f"{point.name} · already in the registry")
            continue
        params = params_to_run(loaded, point)
        if params.calibration_needed() is not None:
            on_step(f"{point.name} · calibrating")
        checkpoint = checkpoint_record(point, folder)
        started = time.perf_counter()
        pruned, effects = apply_point(submission, loaded, point, folder, params)
        if device.type == "cuda":
            torch.cuda.synchronize()
        calibration = calibration_record(loaded, params, time.perf_counter() - started)
        on_step(f"{point.name} · tracing GEMMs")
        gemms = checked_gemms(loaded, pruned, effects, point.name)
        if misaligned := unaligned(gemms, GPU_DTYPE.itemsize):  # on a CPU too: the shapes are the GPU's
            on_warning(
                f"{point.name}: {', '.join(misaligned)}: not a multiple of {ALIGNMENT_BYTES // GPU_DTYPE.itemsize}, "
                f"so in bf16 these rows are not {ALIGNMENT_BYTES}-byte aligned and a GPU's tensor-core GEMMs run "
                "them slower than the roofline assumes"
            )
        latency = []
        for scenario in scenarios:
            on_step(f"{point.name} · {scenario.name}")
            timed = (
                time_tensor_parallel(ranks, loaded, pruned, scenario, effects, roofline, warmup, repeats)
                if ranks
                else time_scenario(loaded, pruned, scenario, effects, roofline, warmup, repeats, mode, max_repeats)
            )
            if timed.timing is not None and (why := busy(timed.timing)):
                on_warning(f"{point.name} · {scenario.name}: {why}")
            latency.append(timed)
        peak = activation_peak(pruned, max(scenarios, key=_size)) if device.type == "cuda" and not ranks else None
        point_result = PointResult(
            sharding=sharding(pruned, ranks.ranks) if ranks else None,
            operating_point=point.name, effects=effects, gemms=gemms, stats=model_stats(pruned, peak),
            latency=latency, quality=[q.of(pruned) for q in qualities], calibration=calibration,
            checkpoint=checkpoint, stand_in=stand_in_selection(params, point.params_for(loaded.architecture.name)),
        )  # fmt: skip
        del pruned
        store(result(points=[point_result]))
        measured.append(point_result)
    if ranks:
        ranks.close()
    return result(points=measured)


def check_request(
    submission: Submission,
    device_name: str,
    mode: ExecutionMode,
    only: set[str] | None,
    tensor_parallel: int | None = None,
) -> tuple[torch.device, torch.dtype]:
    """The device and dtype to measure with, once the request is known to make sense."""
    device = torch.device(device_name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise EvaluationError("--device cuda asked for, but torch sees no CUDA device")
    if tensor_parallel is not None:
        if mode != "fused":
            raise EvaluationError(f"--tp shards fused mode's forward: use --mode fused, not --mode {mode}")
        if device.type == "cuda" and torch.cuda.device_count() < tensor_parallel:
            raise EvaluationError(
                f"--tp {tensor_parallel} needs {tensor_parallel} GPUs; torch sees {torch.cuda.device_count()}"
            )
    elif mode != "eager" and device.type != "cuda":
        raise EvaluationError(f"--mode {mode} captures CUDA Graphs and needs --device cuda")
    unknown = sorted((only or set()) - {p.name for p in submission.adapter.operating_points})
    if unknown:
        raise EvaluationError(f"no operating point named {', '.join(map(repr, unknown))} in this submission")
    return device, GPU_DTYPE if device.type == "cuda" else torch.float32


def load_checked(
    submission: Submission,
    model_name: str,
    device_name: str,
    dtype: torch.dtype,
    points: list[OperatingPoint] | None = None,
) -> LoadedModel:
    """The model to prune, once every operating point in `points` (default: all) is known to fit it."""
    points = list(submission.adapter.operating_points) if points is None else points
    check_base(points, model_name)
    if model_name in models():
        check_fit(points, models()[model_name])  # before building a model that may be large
    try:
        loaded = load_model(model_name, device_name, dtype)
    except ValueError as err:
        raise EvaluationError(str(err)) from None
    check_fit(points, loaded.architecture)
    return loaded


def check_fit(points: list[OperatingPoint], arch: ModelArchitecture) -> None:
    """Each point's parameters for `arch` (its `per_model` entry, else `params`) apply to it."""
    for point in points:
        problem = point.params_for(arch.name).misfit(arch)
        if problem and point.per_model and arch.name not in point.per_model:
            named = ", ".join(point.per_model)
            problem = f"its per_model parameters are for {named} only, and its plain params do not apply: {problem}"
        if problem:
            raise EvaluationError(f"operating point '{point.name}' does not fit {arch.name}: {problem}")


def check_base(points: list[OperatingPoint], model_name: str) -> None:
    """A submitted checkpoint is measured against the dense model it was pruned from, and no other."""
    for point in points:
        if isinstance(point.params, CheckpointParams) and point.params.base != model_name:
            raise EvaluationError(
                f"operating point '{point.name}' is a checkpoint pruned from {point.params.base}: "
                f"evaluate it with --model {point.params.base}, not {model_name}"
            )


def checkpoint_record(point: OperatingPoint, folder: Path | None) -> CheckpointRecord | None:
    """The sha256 of a submitted checkpoint's weights files, taken before they are loaded; None for other adapters."""
    if not isinstance(point.params, CheckpointParams):
        return None
    from prunereg.adapters.checkpoint import CheckpointError, weights_record

    try:
        return weights_record(point.params, _submission_folder(folder))
    except CheckpointError as err:
        raise EvaluationError(f"operating point '{point.name}': {err}") from None


def _submission_folder(folder: Path | None) -> Path:
    if folder is None:
        raise EvaluationError("a checkpoint's path is relative to its submission file: name the submission's folder")
    return folder


def stand_in_selection(ran: AdapterParams, own: AdapterParams) -> str | None:
    """The selection that stood in for the point's own (`params_to_run`), or None where its own ran."""
    return getattr(ran, "selection", None) if ran is not own else None


def params_to_run(loaded: LoadedModel, point: OperatingPoint) -> AdapterParams:
    """The point's parameters for the loaded model, or on random weights their shape stand-in
    (AdapterParams.shape_stand_in) where one fits."""
    own = point.params_for(loaded.architecture.name)
    stand_in = own.shape_stand_in() if loaded.weights == "random" else None
    return stand_in if stand_in is not None and stand_in.misfit(loaded.architecture) is None else own


def apply_point(
    submission: Submission,
    loaded: LoadedModel,
    point: OperatingPoint,
    folder: Path | None = None,
    params: AdapterParams | None = None,
) -> tuple[PreTrainedModel, list[ResolvedEffect]]:
    """A pruned copy of the loaded model at one operating point, and the effects it declares there.

    A selection that scores on activations gets its declared calibration batches, run on the
    dense copy before the adapter prunes it. A submitted checkpoint (adapter 'checkpoint') is loaded
    from under `folder`, the submission file's folder; the dense model is only read then, not copied.
    `params` replaces the point's parameters (its shape stand-in, from `params_to_run`); the effects are
    always the point's own on this model (its `per_model` entry, else `params`), resolved to what the adapter
    removes from it.
    """
    own = point.params_for(loaded.architecture.name)
    if isinstance(own, CheckpointParams):
        from prunereg.adapters.checkpoint import ADAPTER, CheckpointError

        try:
            pruned = ADAPTER.apply(loaded.model, own, None, folder=_submission_folder(folder))
        except CheckpointError as err:
            raise EvaluationError(f"operating point '{point.name}': {err}") from None
        return pruned, resolve(submission.effects, own, loaded.architecture)
    params = params or own
    calibration = params.calibration_needed()
    ids = None
    if calibration is not None:
        config = loaded.model.config
        ids = calibration_ids(calibration, loaded.tokenizer, config.vocab_size, config.max_position_embeddings)
    pruned = get_adapter(submission.adapter.name).apply(copy.deepcopy(loaded.model), params, ids)
    return pruned, resolve(submission.effects, own, loaded.architecture)


def calibration_record(loaded: LoadedModel, params: AdapterParams, seconds: float) -> CalibrationRecord | None:
    """The calibration `apply_point` ran the selection of `params` on (length capped as `calibration_ids` caps it),
    and `seconds`, the wall-clock time of that apply stage; None when the selection needs no calibration."""
    declared = params.calibration_needed()
    if declared is None:
        return None
    length = declared.length_on(loaded.model.config.max_position_embeddings)
    return CalibrationRecord(
        dataset=declared.dataset, sequences=declared.sequences, length=length, seed=declared.seed,
        tokens=declared.sequences * length, seconds=seconds,
    )  # fmt: skip


def trace_point(loaded: LoadedModel, pruned, effects, seq_len: int = TRACE_SEQ_LEN):
    """The traced GEMMs of one batch-1 prefill of the dense and the pruned model, compared with `effects`.

    Returns the per-GEMM rows and the mismatches (empty when the declaration holds).
    """
    seq_len = min(seq_len, loaded.architecture.max_position_embeddings // 64 * 64)
    scenario = Scenario(phase=Phase.prefill, batch_size=1, seq_len=seq_len)
    return check_declaration(loaded.model, pruned, loaded.architecture, scenario, effects, tokenizer=loaded.tokenizer)


def checked_gemms(loaded: LoadedModel, pruned, effects, point_name: str) -> list[GemmTrace]:
    """The GEMMs the pruned model runs in one traced prefill; refuses a declaration they contradict."""
    rows, mismatches = trace_point(loaded, pruned, effects)
    if mismatches:
        raise EvaluationError(
            f"operating point '{point_name}' does not do what the submission declares: " + "; ".join(mismatches)
        )
    return [gemm for row in rows for gemm in row.pruned]


def time_scenario(
    loaded: LoadedModel,
    pruned,
    scenario: Scenario,
    effects,
    roofline,
    warmup: int,
    repeats: int,
    mode: ExecutionMode,
    max_repeats: int | None = None,
) -> LatencyResult:
    """Dense and pruned timed side by side in one scenario, next to the roofline's times for both."""
    try:
        timing = measure_pair(loaded.model, pruned, scenario, warmup, repeats, mode, loaded.tokenizer, max_repeats)
    except MaskedAttentionTimed as err:
        raise EvaluationError(str(err)) from None
    return latency_result(
        scenario, timing.dense, timing.pruned, effects, roofline, execution=timing.execution, fallback=timing.fallback,
        gpu_before=timing.gpu_before, gpu_after=timing.gpu_after, timing=timing.timing,
    )  # fmt: skip


def latency_result(
    scenario: Scenario, dense: list[float], pruned: list[float], effects, roofline, **how
) -> LatencyResult:
    """The interleaved samples of one scenario summarized, next to the roofline's times; `how` says how they ran."""
    return LatencyResult(
        scenario=scenario, samples=pruned, **latency_summary(pruned), dense_samples=dense,
        dense_median=latency_summary(dense)["median"], theoretical=roofline(scenario, effects).time_ms,
        theoretical_dense=roofline(scenario, ()).time_ms, **how,
    )  # fmt: skip


def tensor_parallel_ranks(tensor_parallel: int | None, device: torch.device):
    """The processes a tensor-parallel evaluation times on, started once for all its points; None for one device."""
    if tensor_parallel is None:
        return None
    from prunereg.harness.tensor_parallel import Ranks

    return Ranks(tensor_parallel, device.type)


def time_tensor_parallel(
    ranks, loaded: LoadedModel, pruned, scenario: Scenario, effects, roofline, warmup: int, repeats: int
) -> LatencyResult:
    """`time_scenario` on the ranks, each repeat the slowest rank's time; a model the shards cannot hold is
    refused with the reason (there is no other mode to fall back to)."""
    from prunereg.harness.fused import FusedRefusal
    from prunereg.harness.tensor_parallel import TensorParallelError
    from prunereg.harness.tensor_parallel import measure_pair as measure_sharded

    try:
        dense, samples, before, after = measure_sharded(
            ranks, loaded.model, pruned, scenario, warmup, repeats, loaded.tokenizer
        )
    except (FusedRefusal, TensorParallelError) as err:
        raise EvaluationError(f"tensor-parallel mode cannot run this point: {err}") from None
    return latency_result(
        scenario, dense, samples, effects, roofline, execution="fused", gpu_before=before, gpu_after=after
    )


def sharding(pruned, ranks: int) -> Sharding:
    """How the pruned model is split over the ranks (harness.tensor_parallel.sharding), or why it cannot be."""
    from prunereg.harness.tensor_parallel import TensorParallelRefusal
    from prunereg.harness.tensor_parallel import sharding as split_layers

    try:
        return split_layers(pruned, ranks)
    except TensorParallelRefusal as err:
        raise EvaluationError(f"tensor-parallel mode cannot run this point: {err}") from None


def quality_measures(loaded: LoadedModel, names: tuple[str, ...]) -> list[QualityMeasure]:
    """The quality tasks to score each point on, with the dense model scored once; none on random weights,
    whose quality means nothing. A task that cannot run here (no local data, no lm-eval) is one line, before
    any point is pruned."""
    if loaded.weights != "trained" or loaded.tokenizer is None:
        return []
    try:
        return [measure(loaded.model, loaded.tokenizer, name) for name in names]
    except (TaskUnavailable, ValueError) as err:
        raise EvaluationError(str(err)) from None


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
