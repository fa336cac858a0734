"""What an evaluation produces: the contract between the harness (adapters/) and the registry.

Every latency keeps its unit, raw samples and percentiles; every quality figure carries its
direction, so the Pareto code never guesses. Exported to JSON Schema like the submission.
"""

from __future__ import annotations

import hashlib
import json
from typing import Literal

from pydantic import Field

from .catalog import Frozen, Scenario
from .effects import ResolvedEffect
from .submission import Submission


def relative_loss(value: float, dense_value: float, higher_is_better: bool) -> float:
    """Quality lost relative to the dense model (0.05 = 5 % worse); negative when pruning helped."""
    if dense_value == 0:
        raise ValueError("dense value is zero: relative loss is undefined")
    change = (dense_value - value) if higher_is_better else (value - dense_value)
    return change / abs(dense_value)


ExecutionMode = Literal["eager", "graph", "compiled"]
EXECUTION_MODES: dict[str, str] = {
    "eager": "transformers' own forward with its dynamic KV cache, launched op by op: what a user's script times",
    "graph": "static KV cache, each step captured once in a CUDA Graph and replayed; L2 flushed between repeats",
    "compiled": "graph mode on a torch.compile'd forward (fused kernels)",
}
"""How the timed steps run; runs in different modes are never compared with each other."""


class Environment(Frozen):
    """Where and how a run was measured; its key groups runs that are comparable."""

    device: Literal["cpu", "cuda"] = Field(description="torch device type the run used")
    device_name: str = Field(max_length=200, description="the device as the driver names it, e.g. NVIDIA H200")
    device_profile: str | None = Field(None, description="catalog device used for the roofline")
    driver: str | None = Field(None, description="GPU driver version; none on CPU")
    python: str = Field(description="Python version")
    torch: str = Field(description="torch version")
    transformers: str = Field(description="transformers version")
    prunereg: str = Field(description="prunereg version")
    git_revision: str | None = Field(None, description="prunereg's git commit, when run from a checkout")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(description="dtype of weights and activations")
    execution_mode: ExecutionMode = Field("eager", description="how the timed steps were meant to run")
    threads: int = Field(ge=1, description="torch CPU threads")

    def key(self) -> str:
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


class ModelStats(Frozen):
    """Measured by prunereg on the pruned model, never taken from the method's own ratio."""

    parameters: int = Field(ge=0, description="parameters stored, zeros included")
    nonzero_parameters: int = Field(ge=0, description="parameters that are not zero")
    weight_bytes: int = Field(ge=0, description="bytes of all weights as stored")
    num_layers: int = Field(ge=0, description="decoder layers left")
    peak_memory_bytes: int | None = Field(
        None, ge=0, description="peak allocator memory during measurement (CUDA) or max RSS growth (CPU)"
    )


class GpuState(Frozen):
    """An NVML reading of the GPU, taken right before and right after a scenario's timed repeats."""

    sm_clock_mhz: int = Field(ge=0, description="streaming-multiprocessor clock, MHz")
    memory_clock_mhz: int = Field(ge=0, description="memory clock, MHz")
    temperature_c: int = Field(description="GPU temperature, degrees Celsius")
    power_w: float | None = Field(None, ge=0, description="power draw in watts, where NVML reports it")
    clock_event_reasons: list[str] = Field(
        default_factory=list, description="active NVML clock-event (throttle) reasons, idle excluded"
    )


class LatencyResult(Frozen):
    scenario: Scenario = Field(description="phase, batch size and length measured")
    unit: Literal["ms"] = Field("ms", description="unit of every time here")
    samples: list[float] = Field(description="raw per-repeat times in ms")
    median: float = Field(gt=0, description="median of the pruned model's samples, ms")
    p20: float = Field(gt=0, description="20th percentile of the samples, ms")
    p80: float = Field(gt=0, description="80th percentile of the samples, ms")
    dense_median: float = Field(gt=0, description="dense baseline, measured in the same run")
    theoretical: float = Field(gt=0, description="roofline time of the pruned model, ms")
    theoretical_dense: float = Field(gt=0, description="roofline time of the dense model, ms")
    execution: ExecutionMode = Field(
        "eager",
        description="how the dense and pruned steps really ran; differs from the environment's mode only on a fallback",
    )
    fallback: str | None = Field(None, max_length=300, description="why the environment's mode could not be used")
    gpu_before: GpuState | None = Field(None, description="the GPU right before the timed repeats (CUDA only)")
    gpu_after: GpuState | None = Field(None, description="the GPU right after the timed repeats (CUDA only)")

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


class QualityResult(Frozen):
    task: str = Field(description="e.g. heldout-ppl: perplexity on the model's held-out split")
    metric: str = Field(description="e.g. cross_entropy (nats per token)")
    value: float = Field(description="the pruned model's value")
    dense_value: float = Field(description="the dense model's value on the same tokens")
    higher_is_better: bool = Field(description="direction of the metric")
    tokens: int = Field(ge=0, description="tokens scored")

    @property
    def relative_loss(self) -> float:
        return relative_loss(self.value, self.dense_value, self.higher_is_better)


class GemmTrace(Frozen):
    """GEMMs of one kind that the pruned model really executed in one traced forward, grouped by shape.

    `kernel` says how they ran: "dense" (a physically smaller or unchanged dense GEMM), "masked dense"
    (zeros inside a dense kernel: no speedup expected), or the sparse kernel and its backend.
    """

    gemm: str = Field(description="a GEMM kind of the taxonomy, or 'router' / 'other'")
    count: int = Field(ge=0, description="instances (per head for the attention products)")
    m: int = Field(ge=0, description="M: rows of the output (tokens)")
    n: int = Field(ge=0, description="N: columns of the output")
    k: int = Field(ge=0, description="K: the reduction")
    flops: float = Field(ge=0, description="2*M*N*K*count as executed")
    effective_flops: float = Field(ge=0, description="flops on the weights/pairs that are not pruned")
    kernel: str = Field(max_length=80, description="dense, masked dense, or the sparse kernel and its backend")


class PointResult(Frozen):
    operating_point: str = Field(description="name of the submission's operating point")
    effects: list[ResolvedEffect] = Field(description="the declared effects resolved at this point")
    gemms: list[GemmTrace] = Field(default_factory=list, description="the traced GEMMs of one prefill forward")
    stats: ModelStats = Field(description="size of the pruned model, measured")
    latency: list[LatencyResult] = Field(description="one entry per scenario")
    quality: list[QualityResult] = Field(description="quality measured by prunereg; empty on random weights")


class EvaluationResult(Frozen):
    """One `prunereg evaluate` of one submission on one model in one environment."""

    spec_hash: str = Field(description="sha256 of the submission's canonical JSON")
    model: str = Field(description="catalog name, or the folder name of a local checkpoint")
    weights: Literal["trained", "random"] = Field(description="random weights give latency but no quality")
    environment: Environment = Field(description="where and how it was measured")
    dense_stats: ModelStats = Field(description="size of the dense model")
    points: list[PointResult] = Field(description="one entry per operating point measured")


class SavedEvaluation(Frozen):
    """An evaluation written to a file: the submission as evaluated and its result, ingestable later."""

    submission: Submission = Field(description="the submission exactly as evaluated")
    result: EvaluationResult = Field(description="what the evaluation measured")

    def file_name(self) -> str:
        env = self.result.environment
        return (
            f"{self.submission.method.slug}--{self.result.model}--{env.device_profile or env.device}-{env.key()}.json"
        )
