"""What an evaluation produces: the contract between the harness (adapters/) and the registry.

Every latency keeps its unit, raw samples and percentiles; every quality figure carries its
direction, so the Pareto code never guesses. Exported to JSON Schema like the submission.
A results file comes from someone else's machine: every field is bounded here (numbers finite,
strictly typed and physically plausible, text one line and short), and what one field cannot
say (statistics of the samples, the roofline, the declaration) spec/result_checks.py checks.
"""

from __future__ import annotations

import hashlib
import json
import statistics
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, ValidationError

from .calibration import CalibrationSet
from .catalog import Frozen, Scenario
from .effects import ResolvedEffect
from .submission import Name, Submission
from .taxonomy import Gemm

NO_CONTROL = r"^[^\x00-\x1f\x7f-\x9f]*$"
"""Stored text holds no control characters (NUL, newlines, escapes, C1): one line, and storable everywhere."""


def _text(max_length: int) -> dict[str, Any]:
    return {"min_length": 1, "max_length": max_length, "pattern": NO_CONTROL}


def text(max_length: int, description: str) -> Any:
    """A required, bounded, one-line string field."""
    return Field(**_text(max_length), description=description)


Label = Annotated[str, Field(**_text(64))]
MAX_REPEATS = 1000
"""Timed repeats a latency may hold: `prunereg evaluate --repeats` accepts at most this many, and repeats added
while the speedup's interval is too wide (Timing.added_repeats) stop here too."""
MAX_MS = 3_600_000.0
"""An hour: no single forward step of a measured scenario takes longer."""
Milliseconds = Annotated[float, Field(strict=True, gt=0, le=MAX_MS)]
Count = Annotated[int, Field(strict=True, ge=0, le=10**13)]
Bytes = Annotated[int, Field(strict=True, ge=0, le=10**15)]
MeasuredScore = Annotated[float, Field(strict=True, ge=-1e6, le=1e6)]
MAX_RESULT_BYTES = 2_000_000
"""A saved evaluation file is at most this large (the committed ones are about 13 kB)."""


class Measured(Frozen):
    """A part of the results contract: frozen, no unknown field, every number finite."""

    model_config = ConfigDict(allow_inf_nan=False)


def relative_loss(value: float, dense_value: float, higher_is_better: bool) -> float:
    """Quality lost relative to the dense model (0.05 = 5 % worse); negative when pruning helped."""
    if dense_value == 0:
        raise ValueError("dense value is zero: relative loss is undefined")
    change = (dense_value - value) if higher_is_better else (value - dense_value)
    return change / abs(dense_value)


ExecutionMode = Literal["eager", "graph", "compiled", "fused"]
EXECUTION_MODES: dict[str, str] = {
    "eager": "transformers' own forward with its dynamic KV cache, launched op by op: what a user's script times",
    "graph": "static KV cache, each step captured once in a CUDA Graph and replayed; L2 flushed between repeats",
    "compiled": "graph mode on a torch.compile'd forward (fused kernels)",
    "fused": "prunereg's own forward on the pruned weights (q/k/v and gate/up each one GEMM, its own static KV cache, "
    "SDPA), compiled and captured like graph mode",
}
"""How the timed steps run, from what a user's script gets to prunereg's fastest forward; runs in different modes are
never compared with each other."""


class Environment(Measured):
    """Where and how a run was measured; its key groups runs that are comparable."""

    device: Literal["cpu", "cuda"] = Field(description="torch device type the run used")
    device_name: str = text(200, "the device as the driver names it, e.g. NVIDIA H200")
    device_profile: str | None = Field(
        None, max_length=40, pattern=r"^[a-z0-9][a-z0-9-]*$", description="catalog device used for the roofline"
    )
    driver: str | None = Field(None, **_text(64), description="GPU driver version; none on CPU")
    python: str = text(64, "Python version")
    torch: str = text(64, "torch version")
    transformers: str = text(64, "transformers version")
    prunereg: str = text(32, "prunereg version")
    git_revision: str | None = Field(None, **_text(64), description="prunereg's git commit, when run from a checkout")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(description="dtype of weights and activations")
    execution_mode: ExecutionMode = Field("eager", description="how the timed steps were meant to run")
    threads: int = Field(strict=True, ge=1, le=4096, description="torch CPU threads")
    tensor_parallel: int | None = Field(
        None, strict=True, ge=2, le=64,
        description="processes (GPUs) one model ran tensor-parallel over (harness/tensor_parallel.py); none for one",
    )  # fmt: skip

    def key(self) -> str:
        unset = {"tensor_parallel"} if self.tensor_parallel is None else set()  # keys from before the field stay
        blob = json.dumps(self.model_dump(mode="json", exclude=unset), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    @property
    def dtype_bytes(self) -> int:
        return 4 if self.dtype == "float32" else 2


class ModelStats(Measured):
    """Measured by prunereg on the pruned model, never taken from the method's own ratio."""

    parameters: Count = Field(description="parameters stored, zeros included")
    nonzero_parameters: Count = Field(description="parameters that are not zero")
    weight_bytes: Bytes = Field(description="bytes of all weights as stored")
    num_layers: int = Field(strict=True, ge=0, le=10_000, description="decoder layers left")
    peak_memory_bytes: Bytes | None = Field(
        None, description="peak allocator memory during measurement (CUDA) or max RSS growth (CPU)"
    )


class GpuState(Measured):
    """An NVML reading of the GPU, taken right before and right after a scenario's timed repeats."""

    sm_clock_mhz: int = Field(strict=True, ge=0, le=10_000, description="streaming-multiprocessor clock, MHz")
    memory_clock_mhz: int = Field(strict=True, ge=0, le=100_000, description="memory clock, MHz")
    temperature_c: int = Field(strict=True, ge=-50, le=150, description="GPU temperature, degrees Celsius")
    power_w: float | None = Field(
        None, strict=True, ge=0, le=10_000, description="power draw in watts, where NVML reports it"
    )
    clock_event_reasons: list[Label] = Field(
        default_factory=list, max_length=32, description="active NVML clock-event (throttle) reasons, idle excluded"
    )


class Timing(Measured):
    """What the harness did against noise while timing one scenario, kept with its latency.

    On a CPU the wall clock shares the machine: the thread count is pinned, the load is read before
    the repeats (a busy machine is warned about, not refused), and repeats are added while the
    speedup's interval is wider than spec.uncertainty.MAX_HALF_WIDTH, up to `max_repeats`.
    """

    threads: int = Field(strict=True, ge=1, le=4096, description="torch CPU threads during the repeats")
    cpus: int = Field(strict=True, ge=1, le=65536, description="CPUs the process could run on")
    load_before: float | None = Field(
        None, strict=True, ge=0, le=1e5, description="1-minute load average right before the repeats; none where the "
        "system does not report one",
    )  # fmt: skip
    repeats: int = Field(strict=True, ge=3, le=MAX_REPEATS, description="timed repeats asked for")
    added_repeats: int = Field(
        strict=True, ge=0, le=MAX_REPEATS, description="repeats added because the speedup's interval was too wide"
    )
    max_repeats: int = Field(
        strict=True, ge=3, le=MAX_REPEATS, description="the most repeats it would have added up to"
    )


class LatencyResult(Measured):
    scenario: Scenario = Field(description="phase, batch size and length measured")
    unit: Literal["ms"] = Field("ms", description="unit of every time here")
    samples: list[Milliseconds] = Field(
        min_length=3, max_length=MAX_REPEATS, description="raw per-repeat times in ms, in the order measured"
    )
    median: Milliseconds = Field(description="median of the pruned model's samples, ms")
    p20: Milliseconds = Field(description="20th percentile of the samples (inclusive deciles), ms")
    p80: Milliseconds = Field(description="80th percentile of the samples (inclusive deciles), ms")
    dense_samples: list[Milliseconds] | None = Field(
        None,
        min_length=3,
        max_length=MAX_REPEATS,
        description="raw per-repeat times of the dense model, interleaved with `samples`; files written before "
        "prunereg recorded them have none, and their dense median can only be bounded",
    )
    dense_median: Milliseconds = Field(description="dense baseline, measured in the same run")
    theoretical: Milliseconds = Field(description="roofline time of the pruned model, ms; recomputed on ingestion")
    theoretical_dense: Milliseconds = Field(description="roofline time of the dense model, ms; recomputed on ingestion")
    execution: ExecutionMode = Field(
        "eager",
        description="how the dense and pruned steps really ran; differs from the environment's mode only on a fallback",
    )
    fallback: str | None = Field(None, **_text(300), description="why the environment's mode could not be used")
    gpu_before: GpuState | None = Field(None, description="the GPU right before the timed repeats (CUDA only)")
    gpu_after: GpuState | None = Field(None, description="the GPU right after the timed repeats (CUDA only)")
    timing: Timing | None = Field(
        None, description="threads, load and repeats added against noise; none in files written before prunereg "
        "recorded them",
    )  # fmt: skip

    @property
    def speedup(self) -> float:
        return self.dense_median / self.median

    @property
    def theoretical_speedup(self) -> float:
        return self.theoretical_dense / self.theoretical

    @property
    def realization(self) -> float:
        """Measured speedup over theoretical speedup: the figure the paper is about."""
        return self.speedup / self.theoretical_speedup

    @property
    def spread(self) -> float:
        return self.p80 / self.p20 - 1.0


def latency_summary(samples: list[float]) -> dict[str, float]:
    """Median and the 20th/80th percentiles (inclusive deciles): how the harness summarizes samples."""
    deciles = statistics.quantiles(samples, n=10, method="inclusive")
    return {"median": statistics.median(samples), "p20": deciles[1], "p80": deciles[7]}


class QualityResult(Measured):
    task: Label = Field(description="e.g. heldout-ppl: perplexity on the model's held-out split")
    metric: Label = Field(description="e.g. cross_entropy (nats per token)")
    value: MeasuredScore = Field(description="the pruned model's value")
    dense_value: MeasuredScore = Field(description="the dense model's value on the same tokens")
    higher_is_better: bool = Field(strict=True, description="direction of the metric")
    tokens: int = Field(
        strict=True, ge=0, le=10**12, description="tokens scored (perplexity tasks; 0 where `examples` counts instead)"
    )
    task_version: str | None = Field(
        None, pattern=r"^[0-9]+(\.[0-9]+)?$", max_length=16,
        description="the task's protocol version (spec/tasks.py); none in files written before tasks had versions",
    )  # fmt: skip
    shots: int | None = Field(None, strict=True, ge=0, le=1000, description="few-shot examples per question")
    examples: int | None = Field(
        None, strict=True, ge=1, le=10**9, description="examples scored (question-answering tasks)"
    )
    harness: str | None = Field(None, **_text(64), description="what computed the figure: prunereg, lm-eval")
    harness_version: str | None = Field(None, **_text(32), description="that harness's version")

    @property
    def relative_loss(self) -> float:
        return relative_loss(self.value, self.dense_value, self.higher_is_better)


class GemmTrace(Measured):
    """GEMMs of one kind that the pruned model really executed in one traced forward, grouped by shape.

    `kernel` says how they ran: "dense" (a physically smaller or unchanged dense GEMM), "masked dense"
    (zeros inside a dense kernel: no speedup expected), or the sparse kernel and its backend.
    """

    gemm: str = text(32, "a GEMM kind of the taxonomy, or 'router' / 'other'")
    count: int = Field(strict=True, ge=0, le=10**9, description="instances (per head for the attention products)")
    m: int = Field(strict=True, ge=0, le=10**12, description="M: rows of the output (tokens)")
    n: int = Field(strict=True, ge=0, le=10**12, description="N: columns of the output")
    k: int = Field(strict=True, ge=0, le=10**12, description="K: the reduction")
    flops: float = Field(strict=True, ge=0, le=1e24, description="2*M*N*K*count as executed")
    effective_flops: float = Field(
        strict=True, ge=0, le=1e24, description="flops on the weights/pairs that are not pruned"
    )
    kernel: str = text(80, "dense, masked dense, or the sparse kernel and its backend")


ALIGNMENT_BYTES = 16
"""Tensor-core GEMM kernels read rows as 16-byte vectors (cuBLAS's "Tensor Core Usage" restrictions): a weight GEMM
whose N or K is not a multiple of 16 bytes' worth of elements runs on slower kernels than the roofline assumes,
as SliceGPT's 3277 kept channels did before its adapter rounded them to a multiple of 8."""


WEIGHT_GEMMS = frozenset(g.value for g in Gemm) - {Gemm.attn_score.value, Gemm.attn_value.value}


def unaligned(traces: list[GemmTrace], dtype_bytes: int) -> list[str]:
    """The dense weight GEMMs of the taxonomy (not attention's products, routers or "other") whose N or K breaks
    ALIGNMENT_BYTES at this dtype, one line per kind and shape, e.g. "down_proj K = 6738"."""
    step = max(1, ALIGNMENT_BYTES // dtype_bytes)
    lines = []
    for t in traces:
        if t.gemm not in WEIGHT_GEMMS or "dense" not in t.kernel:
            continue
        odd = [f"{name} = {size}" for name, size in (("N", t.n), ("K", t.k)) if size % step]
        if odd:
            lines.append(f"{t.gemm} {' and '.join(odd)}")
    return list(dict.fromkeys(lines))


MAX_CALIBRATION_SECONDS = 7 * 86_400.0
"""A week: no selection's calibration and pruning of one point takes longer."""


class CalibrationRecord(Measured):
    """The calibration data a point's selection ran on, as used, and what calibrating and pruning cost.

    `spec/result_checks.py` checks it against the point's declared `Calibration`.
    """

    dataset: CalibrationSet = Field(description="the calibration set, as declared by the operating point")
    sequences: int = Field(strict=True, ge=1, le=1024, description="calibration sequences, as declared")
    length: int = Field(
        strict=True, ge=1, le=8192, description="tokens per sequence as used: the declared length capped at the "
        "model's context length",
    )  # fmt: skip
    seed: int = Field(strict=True, ge=0, le=2**31 - 1, description="the seed that picked the windows, as declared")
    tokens: int = Field(strict=True, ge=1, le=1024 * 8192, description="calibration tokens: sequences × length")
    seconds: float = Field(
        strict=True, ge=0, le=MAX_CALIBRATION_SECONDS, description="wall-clock seconds of the selection's "
        "calibration and pruning (the adapter's apply on a copy of the dense model): part of the method's cost",
    )  # fmt: skip


class WeightFile(Measured):
    """One weights file of a submitted checkpoint, as hashed right before it was loaded."""

    name: str = Field(pattern=r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}\.safetensors$", description="file name")
    size: Bytes = Field(description="size in bytes")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="sha256 of the file, as `sha256sum` prints it")


class CheckpointRecord(Measured):
    """The checkpoint a point of the `checkpoint` adapter loaded: where, from which base, and its weights' hashes.

    Kept in the saved results file, shown by `prunereg evaluate`, stored with the run (`runs.checkpoint`,
    part of its measurement digest) and shown on the method page.
    """

    path: str = text(400, "the checkpoint folder as the point names it, relative to the submission file's folder")
    base: str = text(64, "the catalog model it was pruned from, which the run measured it against")
    files: list[WeightFile] = Field(min_length=1, max_length=256, description="every *.safetensors file loaded")


RankCounts = Annotated[list[Annotated[int, Field(strict=True, ge=0, le=10**7)]], Field(min_length=2, max_length=64)]


class LayerSharding(Measured):
    """How one decoder layer was split over the ranks: whole units per rank, the first ranks one more where the
    rank count does not divide them (14 KV groups over 4: 4, 4, 3, 3)."""

    kv_groups: RankCounts | None = Field(None, description="KV groups per rank, each with its query heads; none "
                                         "where the attention block is dropped")  # fmt: skip
    heads: RankCounts | None = Field(None, description="query heads per rank")
    channels: RankCounts | None = Field(None, description="MLP channels per rank; none where the MLP is dropped")


class Sharding(Measured):
    """A tensor-parallel run's split of the pruned model: column-parallel q/k/v and gate/up, row-parallel o_proj
    and down_proj, embedding, norms and lm_head replicated on every rank."""

    tensor_parallel: int = Field(strict=True, ge=2, le=64, description="ranks (GPUs)")
    layers: list[LayerSharding] = Field(max_length=10_000, description="one entry per decoder layer left")

    @property
    def uneven(self) -> list[int]:
        """Layers where some rank holds more KV groups or MLP channels than another."""
        return [
            i for i, layer in enumerate(self.layers)
            if any(c is not None and max(c) != min(c) for c in (layer.kv_groups, layer.channels))
        ]  # fmt: skip


class PointResult(Measured):
    operating_point: Name = Field(description="name of the submission's operating point")
    effects: list[ResolvedEffect] = Field(max_length=32, description="the declared effects resolved at this point")
    gemms: list[GemmTrace] = Field(
        default_factory=list, max_length=256, description="the traced GEMMs of one prefill forward"
    )
    stats: ModelStats = Field(description="size of the pruned model, measured")
    latency: list[LatencyResult] = Field(max_length=64, description="one entry per scenario")
    quality: list[QualityResult] = Field(
        max_length=16, description="quality measured by prunereg; empty on random weights"
    )
    calibration: CalibrationRecord | None = Field(
        None, description="the calibration the point's selection ran on and its time; none when it needs none "
        "(as in every file written before prunereg recorded it, when no selection calibrated)",
    )  # fmt: skip
    checkpoint: CheckpointRecord | None = Field(
        None, description="the submitted checkpoint the point loaded (adapter 'checkpoint'); none for other adapters",
    )  # fmt: skip
    stand_in: str | None = Field(
        None, max_length=40, pattern=r"^[a-z_]+$",
        description="random weights only: the baseline selection that pruned in place of the point's calibrated one, "
        "with the same GEMM shapes (AdapterParams.shape_stand_in); none where the point's own selection ran",
    )  # fmt: skip
    sharding: Sharding | None = Field(
        None, description="tensor-parallel runs only: how each layer of the pruned model was split over the ranks"
    )


class EvaluationResult(Measured):
    """One `prunereg evaluate` of one submission on one model in one environment."""

    spec_hash: str = Field(pattern=r"^[0-9a-f]{64}$", description="sha256 of the submission's canonical JSON")
    model: str = text(200, "catalog name, or the folder name of a local checkpoint")
    weights: Literal["trained", "random"] = Field(description="random weights give latency but no quality")
    environment: Environment = Field(description="where and how it was measured")
    dense_stats: ModelStats = Field(description="size of the dense model")
    points: list[PointResult] = Field(max_length=32, description="one entry per operating point measured")


class SavedEvaluation(Measured):
    """An evaluation written to a file: the submission as evaluated and its result, ingestable later."""

    schema_version: Literal[1] = Field(
        1, description="version of this results format; files written before version 1 had none and are version 1"
    )
    submission: Submission = Field(description="the submission exactly as evaluated")
    result: EvaluationResult = Field(description="what the evaluation measured")

    def file_name(self) -> str:
        env = self.result.environment
        return (
            f"{self.submission.method.slug}--{self.result.model}--{env.device_profile or env.device}-{env.key()}.json"
        )

    def save(self, folder: Path) -> Path:
        """Write the file into `folder` (made if missing) under its `file_name`; the path written.

        A file already there of the same run (submission version, model, weights, environment) keeps the points
        this evaluation did not measure: `evaluate` skips the points its registry holds, so a run resumed after a
        killed one must not drop what the killed one saved. A point measured again replaces the saved one."""
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / self.file_name()
        measured = {p.operating_point for p in self.result.points}
        kept = [p for p in self._same_run(path) if p.operating_point not in measured]
        saved = self.result.model_copy(update={"points": kept + self.result.points})
        path.write_text(self.model_copy(update={"result": saved}).model_dump_json(indent=1) + "\n")
        return path

    def _same_run(self, path: Path) -> list[PointResult]:
        """The points of the saved evaluation at `path` if it is of this run; none if it is not, or unreadable."""
        try:
            earlier = SavedEvaluation.model_validate_json(path.read_bytes()).result
        except (OSError, ValidationError):
            return []
        return earlier.points if _run_identity(earlier) == _run_identity(self.result) else []


def _run_identity(result: EvaluationResult) -> tuple[str, ...]:
    return (result.spec_hash, result.model, result.weights, result.environment.key())
