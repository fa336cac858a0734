"""Latency of one prefill (TTFT) or one decode step (TPOT), dense and pruned interleaved.

Dense and pruned repeats alternate so that slow drift of the machine (clocks, other load) hits
both alike; the speedup is a ratio of medians taken within one run. Input token values are
random: latency does not depend on them. Four execution modes (spec.results.EXECUTION_MODES):

- eager: transformers' forward as a user calls it (dynamic KV cache, op-by-op launches). It is
  the figure most papers report, and launch-bound in decode on a fast GPU.
- graph: every buffer allocated once (a static KV cache one slot longer than the context), the
  step captured in a CUDA Graph and replayed, L2 flushed between timed repeats. Decode writes
  the same cache slot on every replay, so each repeat is the same step at the same context.
  Prefill runs without a cache, so SDPA takes its causal fast path (flash/cuDNN); writing the
  prompt's keys and values (0.5 GB for Llama-3.1-8B at 4096 tokens, ~0.1 ms) is not timed.
- compiled: graph mode on a torch.compile'd forward (fused elementwise kernels).
- fused: prunereg's own forward (harness/fused.py: q/k/v and gate/up concatenated, a static KV
  cache of its own, SDPA), captured like graph mode, its layers torch.compile'd on CUDA. It times
  what the pruned shapes cost without transformers' forward around them.

A pair that cannot be captured or compiled is timed in eager mode, both models alike so the
ratio stays fair, and the reason is recorded with the measurement; a pair fused mode refuses or
cannot capture is timed in graph mode (or, failing that too, eager), with the reasons.
"""

from __future__ import annotations

import gc
import inspect
import logging
import os
import statistics
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from transformers import AttentionInterface, DynamicCache, PreTrainedModel, StaticCache
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from prunereg.adapters import sparse_attention
from prunereg.adapters.sparse_attention import NAME as BLOCK_SPARSE
from prunereg.adapters.sparse_attention import block_sparse_attention
from prunereg.spec.catalog import Phase, Scenario
from prunereg.spec.results import MAX_REPEATS, ExecutionMode, GpuState, Timing
from prunereg.spec.uncertainty import MAX_HALF_WIDTH, half_width, speedup_interval

from .fingerprint import gpu_state
from .fused import FusedModel, FusedRefusal, capture_refusal

logger = logging.getLogger(__name__)


def cache_argument(model: PreTrainedModel) -> str:
    """The forward() keyword for the KV cache: `cache` from transformers 5.2x on, `past_key_values` before."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def scenario_ids(
    vocab_size: int, scenario: Scenario, tokenizer=None, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """The scenario's prompt [b, s] and the token decoded after it [b, 1]: seeded random ids, or with a
    tokenizer BOS and consecutive held-out text per row.

    Text where there is a tokenizer, because a data-dependent adapter (token_routing's trained router,
    sparse_attention's estimated blocks) decides on what it reads, and text is what it was calibrated
    on; every other adapter runs the same shapes on either prompt.
    """
    b, s = scenario.batch_size, scenario.seq_len
    if tokenizer is None:
        generator = torch.Generator().manual_seed(seed)
        prompt = torch.randint(vocab_size, (b, s), generator=generator)
        return prompt, torch.randint(vocab_size, (b, 1), generator=generator)
    from .embedded import EVAL_SPLIT
    from .quality import encode

    text = encode(tokenizer, EVAL_SPLIT)
    rows = text.repeat(-(-b * s // text.numel()))[: b * s].view(b, s)  # s - 1 prompt tokens, then the next one
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else int(text[0])
    return torch.cat([torch.full((b, 1), bos), rows[:, :-1]], dim=1), rows[:, -1:]


class Workload:
    """Eager mode: one scenario on one model; `step` is the timed work, `reset` restores state off the clock."""

    def __init__(self, model: PreTrainedModel, scenario: Scenario, seed: int = 0, tokenizer=None):
        self.model, self.scenario = model, scenario
        device = next(model.parameters()).device
        prompt, token = scenario_ids(model.config.vocab_size, scenario, tokenizer, seed)
        self.prompt, self.token = prompt.to(device), token.to(device)
        self.position = torch.full((scenario.batch_size, 1), scenario.seq_len, device=device)
        self.cache_arg = cache_argument(model)
        self.cache = self.new_cache() if scenario.phase is Phase.decode else None
        if self.cache is not None:
            self.fill()

    def new_cache(self):
        return DynamicCache(config=self.model.config)

    def fill(self) -> None:
        """The context into the cache, untimed."""
        _forward(self.model, self.prompt, use_cache=True, **{self.cache_arg: self.cache})

    def step(self):
        if self.cache is None:
            return _forward(self.model, self.prompt, use_cache=True)
        return _forward(
            self.model, self.token, position_ids=self.position, use_cache=True, **{self.cache_arg: self.cache}
        )

    def reset(self) -> None:
        if self.cache is not None:
            extra = self.cache.get_seq_length() - self.scenario.seq_len
            if extra > 0:
                self.cache.crop(-extra)  # a negative count removes tokens on every transformers 5.x


@torch.inference_mode()
def _forward(forward: Callable, ids: torch.Tensor, **kwargs):
    return forward(ids, logits_to_keep=1, **kwargs)


UNMASKED_SDPA = "prunereg_unmasked_sdpa"
AttentionInterface.register(UNMASKED_SDPA, sdpa_attention_forward)
"""SDPA registered under a name without a mask function, so transformers passes no mask: a decode
step over a full static cache, like a prefill without cache, needs none. Unmasked, SDPA reads the
grouped K/V heads in place (enable_gqa) and prefill takes the causal flash path; with a mask,
transformers before 5.2x repeats every K/V head (4x the KV-cache traffic in Llama-3 decode)."""

UNMASKED_BLOCK_SPARSE = "prunereg_unmasked_block_sparse"
AttentionInterface.register(UNMASKED_BLOCK_SPARSE, block_sparse_attention)
"""The block-sparse adapters' attention, unmasked for the same reason. With the static cache's mask it took its
masked-SDPA path at dense cost on a GPU: graph mode's decode of MInference ran 0.54x of dense at every density
on an H100, flex_attention's block skipping never ran."""

UNMASKED = {"sdpa": UNMASKED_SDPA, BLOCK_SPARSE: UNMASKED_BLOCK_SPARSE}


class StaticWorkload(Workload):
    """Graph and compiled modes: fixed buffers, so one step can be captured and replayed as is.

    Uncaptured (`step` before `capture`) it runs the same kernels eagerly: that is how the CPU
    tests check that it computes what the eager workload computes. Models on plain SDPA run it
    unmasked (UNMASKED_SDPA), block-sparse adapters too (UNMASKED_BLOCK_SPARSE).
    """

    def __init__(
        self, model: PreTrainedModel, scenario: Scenario, seed: int = 0, compiled: bool = False, tokenizer=None
    ):
        super().__init__(model, scenario, seed, tokenizer)  # fills the static cache with the prompt, uncompiled
        self.forward = torch.compile(model, dynamic=False) if compiled else model
        self.graph: torch.cuda.CUDAGraph | None = None
        self.offsets = self._shared_offsets()

    @torch.inference_mode()
    def _shared_offsets(self) -> torch.Tensor | None:
        """Every cache layer's write offset as a view into one tensor, so one fill rewinds them all.

        transformers keeps one device-side offset per layer and advances it in every update; the
        replayed step must start from the context length each time, at the cost of one kernel.
        """
        layers = [
            layer
            for layer in getattr(self.cache, "layers", ())
            if getattr(layer, "is_initialized", False)
            and isinstance(getattr(layer, "cumulative_length", None), torch.Tensor)
        ]
        if not layers:
            return None
        offsets = torch.stack([layer.cumulative_length for layer in layers])
        for i, layer in enumerate(layers):
            layer.cumulative_length = offsets[i]
        return offsets

    def new_cache(self):
        return StaticCache(config=self.model.config, max_cache_len=self.scenario.seq_len + 1)

    def fill(self) -> None:
        """Unmasked too: the prompt fills an empty static cache, which SDPA's upper-left causal alignment and
        `written_keys` take as is; masked, block-sparse attention would run its masked path on a GPU (`measure_pair`
        refuses a timing where it did)."""
        with _unmasked(self.model.config):
            super().fill()

    @torch.inference_mode()  # the cache's offsets are inference tensors: only there may they be refilled
    def _run(self):
        with _unmasked(self.model.config):
            if self.cache is None:
                return _forward(self.forward, self.prompt, use_cache=False)
            if self.offsets is not None:
                self.offsets.fill_(self.scenario.seq_len)
            cache = {self.cache_arg: self.cache}
            return _forward(self.forward, self.token, position_ids=self.position, use_cache=True, **cache)

    def capture(self, warmup: int = 2) -> None:
        """Warm up on a side stream (lazy allocations, autotuning, compilation), then capture one step."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(warmup):
                self._run()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.output = self._run()  # the graph's own output buffers, rewritten by every replay
        self.graph = graph

    def step(self):
        if self.graph is None:
            return self._run()
        self.graph.replay()

    def reset(self) -> None:
        pass


class FusedWorkload(StaticWorkload):
    """Fused mode: the model's fused forward (harness/fused.py) with its own static KV cache.

    Like StaticWorkload, a decode step writes the slot after the context on every run, and a
    prefill runs without a cache; uncaptured (no `capture`) it runs the same kernels eagerly.
    """

    def __init__(
        self, model: PreTrainedModel, scenario: Scenario, seed: int = 0, compiled: bool = False, tokenizer=None
    ):
        self.model, self.scenario = model, scenario
        device = next(model.parameters()).device
        prompt, token = scenario_ids(model.config.vocab_size, scenario, tokenizer, seed)
        self.prompt, self.token = prompt.to(device), token.to(device)
        decode = scenario.phase is Phase.decode
        with torch.no_grad():
            self.fused = FusedModel(model, scenario.batch_size, scenario.seq_len + 1, cache=decode)
        if decode:
            with torch.inference_mode():
                self.fused(self.prompt)  # the context, uncompiled and untimed
        if compiled:
            self.fused.compile_layers()
        self.graph = None

    @torch.inference_mode()
    def _run(self):
        if self.scenario.phase is Phase.decode:
            return self.fused(self.token, position=self.scenario.seq_len, logits_to_keep=1)
        return self.fused(self.prompt, use_cache=False, logits_to_keep=1)

    def capture(self, warmup: int = 2) -> None:
        if self.fused.capture_refusal is not None:
            raise FusedRefusal(self.fused.capture_refusal)
        super().capture(warmup)


@contextmanager
def _unmasked(config):
    """The model's config on its attention's UNMASKED name for one step, where it has one; the dense model is
    shared, so the name is restored."""
    implementation = config._attn_implementation
    if implementation not in UNMASKED:
        yield
        return
    config._attn_implementation = UNMASKED[implementation]
    try:
        yield
    finally:
        config._attn_implementation = implementation


class MaskedAttentionTimed(RuntimeError):
    """A timing of block-sparse attention that ran its masked dense path on the GPU: the GEMM trace saw (or would
    claim) skipped blocks, the clock did not."""


@dataclass
class PairTiming:
    """Raw per-repeat times (ms) of the dense and the pruned model, and how they were obtained."""

    dense: list[float]
    pruned: list[float]
    execution: ExecutionMode
    fallback: str | None = None
    gpu_before: GpuState | None = None
    gpu_after: GpuState | None = None
    timing: Timing | None = None


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the system has one, as taskset and cgroups set it)."""
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity else os.cpu_count() or 1


def pin_threads(threads: int | None = None) -> int:
    """Fix torch's CPU thread count for the whole evaluation, and return it.

    Default: torch's own count, but never more than the CPUs this process may use; torch counts the
    machine's cores, so a process confined to fewer would run more threads than CPUs, and a thread
    descheduled in the middle of a GEMM stalls the others and shows up as noise.
    """
    count = threads if threads is not None else min(torch.get_num_threads(), available_cpus())
    torch.set_num_threads(count)
    return count


def load_average() -> float | None:
    """The system's 1-minute load average; None where it reports none."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def busy(timing: Timing) -> str | None:
    """Why the machine was too busy for a quiet measurement, or None.

    Busy means more runnable processes, on average over the last minute, than CPUs this process may
    use. The average includes this process's own recent work, so a machine this flags is oversubscribed
    beyond doubt; its numbers are kept, their intervals say how much that cost.
    """
    if timing.load_before is None or timing.load_before <= timing.cpus:
        return None
    return f"load average {timing.load_before:.2f} over {timing.cpus} CPUs before timing: the machine is busy"


def prepare(
    dense: PreTrainedModel,
    pruned: PreTrainedModel,
    scenario: Scenario,
    mode: ExecutionMode,
    tokenizer=None,
    compile_fused: bool | None = None,
) -> tuple[list[Workload], ExecutionMode, str | None]:
    """Both workloads in `mode`, or both in the next mode that works with the reasons the others failed.

    fused falls back to graph, graph and compiled to eager; a model no CUDA Graph can capture (`capture_refusal`)
    skips graph and compiled mode instead of failing midway through a capture. Off CUDA a fused pair runs uncaptured (how
    the CPU tests run it); `compile_fused` (default: on CUDA) compiles its layers.
    """
    reasons: list[str] = []
    if mode == "fused":
        device = next(dense.parameters()).device
        compiled = device.type == "cuda" if compile_fused is None else compile_fused
        works: list[Workload] = []
        try:
            for model in (dense, pruned):
                works.append(_fused(model, scenario, compiled, device.type == "cuda", tokenizer))
            return works, mode, None
        except Exception as err:  # a refused model, or a capture or compile failure: graph mode next
            reasons.append(_failure(mode, works, err))
            mode = "graph"
    refusal = capture_refusal(pruned) or capture_refusal(dense)
    if mode != "eager" and refusal is not None:  # a capture that fails midway keeps its memory: an H100 ran out
        same = any(refusal in reason for reason in reasons)
        reasons.append(f"{mode} mode refused the pair" + (" for the same reason" if same else f": {refusal}"))
        mode = "eager"
    if mode != "eager":
        works = []
        try:
            for model in (dense, pruned):
                work = StaticWorkload(model, scenario, compiled=mode == "compiled", tokenizer=tokenizer)
                work.capture()
                works.append(work)
            return works, mode, "; ".join(reasons)[:300] or None
        except Exception as err:  # any capture or compile failure: recorded with the run, which goes on eagerly
            reasons.append(_failure(mode, works, err))
    return (
        [Workload(dense, scenario, tokenizer=tokenizer), Workload(pruned, scenario, tokenizer=tokenizer)],
        "eager",
        "; ".join(reasons)[:300] or None,
    )


def _fused(model: PreTrainedModel, scenario: Scenario, compiled: bool, capture: bool, tokenizer) -> Workload:
    """One fused workload, captured on CUDA; on failure nothing of it outlives the exception."""
    work = FusedWorkload(model, scenario, compiled=compiled, tokenizer=tokenizer)
    if capture:
        work.capture()
    return work


def _failure(mode: ExecutionMode, works: list[Workload], err: Exception) -> str:
    """Why `mode` failed on the first model it failed on, once what it allocated is released."""
    which = "pruned" if works else "dense"
    works.clear()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
    verb = "refused" if isinstance(err, FusedRefusal) else "failed on"
    logger.debug("%s mode %s the %s model", mode, verb, which, exc_info=err)  # the record keeps one line
    return f"{mode} mode {verb} the {which} model: {type(err).__name__}: {_first_line(err)}"[:300]


def _first_line(err: Exception) -> str:
    return (str(err).strip().splitlines() or [""])[0]


class Timer:
    """Times one step in ms: CUDA events after an L2 flush on a GPU, the wall clock on a CPU.

    The flush also keeps the GPU busy while the host enqueues the step, so the launch latency of
    a replay does not land inside the timed region.
    """

    L2_FLUSH_BYTES = 256 << 20

    def __init__(self, device: torch.device):
        self.flush = (
            torch.empty(self.L2_FLUSH_BYTES, dtype=torch.uint8, device=device) if device.type == "cuda" else None
        )

    def __call__(self, work: Workload) -> float:
        if self.flush is None:  # a CPU
            begin = time.perf_counter()
            work.step()
            elapsed = (time.perf_counter() - begin) * 1e3
            work.reset()
            return elapsed
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        self.flush.zero_()
        start.record()
        work.step()
        end.record()
        end.synchronize()
        work.reset()
        return start.elapsed_time(end)


def measure_pair(
    dense: PreTrainedModel,
    pruned: PreTrainedModel,
    scenario: Scenario,
    warmup: int,
    repeats: int,
    mode: ExecutionMode = "eager",
    tokenizer=None,
    max_repeats: int | None = None,
) -> PairTiming:
    """Time dense and pruned interleaved in `mode` on the scenario's ids (`scenario_ids`); GPU clocks and
    temperature, and the load average, read before the repeats.

    While the speedup's interval (spec.uncertainty) is wider than MAX_HALF_WIDTH, more pairs are timed,
    doubling the count each round, up to `max_repeats` (default `repeats`: none added). The record of
    what was done is the result's `timing`.
    """
    device = next(dense.parameters()).device
    masked_before = sparse_attention.masked_on_gpu
    works, execution, fallback = prepare(dense, pruned, scenario, mode, tokenizer)
    try:
        timed = Timer(device)
        for _ in range(warmup):
            for work in works:
                timed(work)
        load = load_average()
        before = gpu_state(device)
        samples: tuple[list[float], list[float]] = ([], [])

        def time_pairs(count: int) -> tuple[list[float], list[float]]:
            for _ in range(count):
                for work, out in zip(works, samples):
                    out.append(timed(work))
            return samples

        cap = max(repeats, min(max_repeats or repeats, MAX_REPEATS))
        repeated(time_pairs, repeats, cap)
        if masked := sparse_attention.masked_on_gpu - masked_before:
            why = sparse_attention.flex_failure() or "a mask was passed"
            raise MaskedAttentionTimed(
                f"block-sparse attention ran masked SDPA, at dense cost, in {masked} GPU calls while {scenario.name} "
                f"was timed in {execution} mode ({why})"
            )
        timing = Timing(
            threads=torch.get_num_threads(), cpus=available_cpus(), load_before=load, repeats=repeats,
            added_repeats=len(samples[0]) - repeats, max_repeats=cap,
        )  # fmt: skip
        return PairTiming(
            *samples,
            execution=execution,
            fallback=fallback,
            gpu_before=before,
            gpu_after=gpu_state(device),
            timing=timing,
        )
    finally:
        release(works)


def release(works: list[Workload]) -> None:
    """Free what timed workloads hold before the next ones are built. Fused and compiled layers (fused mode's
    concatenated weights, a copy of each model's) stay referenced from dynamo's caches until it is reset:
    without this, `prunereg evaluate --mode fused` on Llama-3.1-8B shapes ran out of an H100's 80 GB at ShortGPT's
    fourth operating point, its third having fallen back to graph mode. `works` may be empty: what the last
    evaluation's models held is freed all the same, once nothing else references them."""
    works.clear()
    gc.collect()
    torch._dynamo.reset()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def repeated(
    time_pairs: Callable[[int], tuple[list[float], list[float]]], repeats: int, max_repeats: int
) -> tuple[list[float], list[float]]:
    """`repeats` interleaved pairs, then more while the speedup's interval is too wide: each round doubles
    the pairs, never past `max_repeats`. `time_pairs(n)` times n more pairs and returns all so far."""
    dense, pruned = time_pairs(repeats)
    while len(dense) < max_repeats:
        low, high = speedup_interval(dense, pruned)
        if half_width(statistics.median(dense) / statistics.median(pruned), low, high) <= MAX_HALF_WIDTH:
            break
        dense, pruned = time_pairs(min(len(dense), max_repeats - len(dense)))
    return dense, pruned
