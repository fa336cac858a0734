"""The roofline cost model: FLOPs, bytes and time per GEMM kind, dense or pruned (pure Python).

Theoretical speedup is priced from declared effects, a model's config and a device profile, so
these conventions are the contract the "realization" figure (measured / theoretical) rests on:

- A GEMM Y[M,N] = X[M,K]·W[K,N] costs 2·M·N·K FLOPs and moves its weights once per instance
  (K·N), its input (M·K) and its output (M·N), times `dtype_bytes` (2 = bf16; the CPU harness
  measures float32, 4). Time = max(FLOPs / matmul_flops, bytes / memory_bandwidth) per GEMM; GEMMs
  run one after another, so an estimate's time is the sum of its rows.
- Tokens: prefill M = batch·seq_len for the layer GEMMs, but lm_head computes the last token only
  (M = batch, as the harness uses logits_to_keep=1); decode M = batch, attending seq_len keys.
- Attention core: one attn_score / attn_value instance per layer and query head, M = batch·query
  tokens, keys per sequence. Prefill is causal and counts half the full product (s²/2, not
  s(s+1)/2). Bytes are flash-attention style, each tensor read or written once and no s×s matrix:
  Q and K under attn_score, V and the output under attn_value, K/V per KV head (GQA). In decode
  that K/V is the whole KV cache; writing new K/V into the cache is part of qkv_proj's output.
- Left out: norms, RoPE, softmax, activation functions, biases, embedding lookup (batch rows only).

Effects, each with fraction f removed, multiply when several hit one GEMM:

- M static (layer, sublayer): the GEMM runs in (1-f) of the layers; its weights are not read and,
  for the attention core, its KV cache does not exist.
- M dynamic (token): M·(1-f) (an average, so decode bs=1 gives M=0.5), weights still read in full
  since the layer runs for the other tokens. Routed attention still reads all keys: a simplification,
  as skipped tokens would leave no K/V behind.
- N or K static (kv_group, head, channel, hidden) and dynamic (key_block): that dimension·(1-f),
  weights and, for the attention core, K/V bytes shrink with it. qkv_proj N at kv_group or head
  also prunes the attention core (see `attention_heads_kept`).
- K 2:4: executed FLOPs and stored values·(1-f), plus 2 bits of index metadata per kept value
  (1/8 of a bf16 value), as sparse tensor cores store it; on a device without them (the CPU
  profile) it is masked dense: only `theoretical_flops` shrink.
- K rank: W[K,N] = A[K,r]·B[r,N] with r·(K+N) = (1-f)·K·N, so FLOPs and weights·(1-f), plus
  writing and reading the M×r intermediate.
- K weight (unstructured): dense kernels gain nothing, so only `theoretical_flops` shrink.
- Added GEMMs (taxonomy.ADDED_GEMMS; SliceGPT's shortcut rotations): none in the dense model; a
  submission that declares effects on one runs it, two instances per layer of M×hidden×hidden,
  shrunk by those effects like any projection.
- Routing (any dynamic M effect): a router and the gather/scatter of kept tokens in every layer,
  in `routing_s` (see `_routing`).

Tensor parallelism over T GPUs (harness/tensor_parallel.py), priced per GPU, the slowest one:

- q/k/v (N), o_proj (K) and the attention core shard by whole KV groups, gate/up (N) and down (K) by
  MLP channels, each as the harness splits them: the largest rank holds ceil(units/T) of the units
  left after pruning (6 KV groups over 4 GPUs: 2, so 1/3 of the layer's attention, not 1/4). Units
  are the declared kept share of the dense count, rounded to whole. Low-rank pairs keep their
  replicated factor whole (column-parallel A, row-parallel B). lm_head, norms and SliceGPT's
  rotations are replicated, their GEMMs whole on every GPU.
- Each layer that keeps its attention (its MLP) ends it with one ring all-reduce of the o_proj
  (down_proj) output, M×N values: every GPU sends 2·(T−1)/T of it over the interconnect
  (`DeviceProfile.interconnect_bandwidth`), in `communication_s`, after its GEMMs (no overlap).
  Dropped layers and blocks take their all-reduces with them; a sliced hidden size shrinks them.
  Left out: the all-reduce's per-step latency, which is what a small decode batch pays.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Literal

from .catalog import DeviceProfile, Frozen, ModelArchitecture, Phase, Scenario
from .effects import ResolvedEffect
from .taxonomy import ADDED_GEMMS, Dimension, Gemm, Granularity, Mode

METADATA_BITS_2_4 = 2
"""Index bits stored per kept value of a 2:4 sparse matrix."""

Bound = Literal["compute", "memory"]


class GemmCost(Frozen):
    """All instances of one GEMM kind in one forward step; m, n, k are one instance's effective shape."""

    gemm: Gemm
    count: float
    m: float
    n: float
    k: float
    flops: float
    theoretical_flops: float
    bytes: float
    weight_bytes: float
    kv_bytes: float
    time_s: float
    bound: Bound


class Estimate(Frozen):
    model: str
    device: str
    scenario: Scenario
    dtype_bytes: int
    rows: tuple[GemmCost, ...]
    flops: float
    theoretical_flops: float
    bytes: float
    weight_bytes: float
    kv_bytes: float
    routing_s: float = 0.0
    tensor_parallel: int = 1
    allreduce_bytes: float = 0.0
    """Bytes each GPU sends in the step's all-reduces (tensor parallelism only)."""
    communication_s: float = 0.0
    time_s: float

    @property
    def time_ms(self) -> float:
        return self.time_s * 1e3

    @property
    def bound(self) -> Bound:
        """The bound of the rows that hold most of the time."""
        compute = sum(r.time_s for r in self.rows if r.bound == "compute")
        return "compute" if compute >= self.time_s - compute else "memory"

    def row(self, gemm: Gemm) -> GemmCost:
        return next(r for r in self.rows if r.gemm is gemm)


def attention_heads_kept(effects: Iterable[ResolvedEffect]) -> tuple[float, float]:
    """Share of query heads and of KV heads left, derived from qkv_proj's static N effects.

    Width pruning is declared on the projections (qkv_proj N, o_proj K), but the heads it removes
    take their attention core with them: QKᵀ and PV run for fewer heads. Removing whole KV groups
    (kv_group) shrinks K, V and the KV cache by the same share; removing single query heads (head)
    keeps every KV head, so K/V projections and the cache stay whole.
    """
    queries = kv = 1.0
    for e in effects:
        if e.gemm is Gemm.qkv_proj and e.dimension is Dimension.N and e.mode is Mode.static:
            if e.granularity is Granularity.kv_group:
                queries *= 1 - e.fraction
                kv *= 1 - e.fraction
            elif e.granularity is Granularity.head:
                queries *= 1 - e.fraction
    return queries, kv


def _keep(effects: Sequence[ResolvedEffect], gemm: Gemm, device: DeviceProfile) -> dict[str, float]:
    """Kept share per factor of one GEMM: layers, m, n, k, sparse (2:4), rank, nonzero (unstructured).

    2:4 on a device without sparse tensor cores runs as masked dense: like unstructured zeros.
    """
    keep = dict(layers=1.0, m=1.0, n=1.0, k=1.0, sparse=1.0, rank=1.0, nonzero=1.0)
    for e in effects:
        if e.gemm is not gemm:
            continue
        g, kept = e.granularity, 1 - e.fraction
        if e.dimension is Dimension.M:
            keep["layers" if e.mode is Mode.static else "m"] *= kept
        elif g is Granularity.pattern_2_4:
            keep["sparse" if device.sparse_2_4 else "nonzero"] *= kept
        elif g is Granularity.rank:
            keep["rank"] *= kept
        elif g is Granularity.weight:
            keep["nonzero"] *= kept
        elif not (
            gemm is Gemm.qkv_proj and e.dimension is Dimension.N and g in (Granularity.kv_group, Granularity.head)
        ):
            keep[e.dimension.value.lower()] *= kept
    return keep


def _cost(gemm: Gemm, device: DeviceProfile, count, m, n, k, flops, nonzero, weights, kv, other) -> GemmCost:
    total = weights + kv + other
    compute, memory = flops / device.matmul_flops, total / device.memory_bandwidth
    return GemmCost(
        gemm=gemm,
        count=count,
        m=m,
        n=n,
        k=k,
        flops=flops,
        theoretical_flops=flops * nonzero,
        bytes=total,
        weight_bytes=weights,
        kv_bytes=kv,
        time_s=max(compute, memory),
        bound="compute" if compute >= memory and compute > 0 else "memory",
    )


def _projection(gemm, device, layers, m, k, n, keep, dtype_bytes, shard_n=1.0, shard_k=1.0) -> GemmCost:
    """One projection kind; `shard_n` (column-parallel) or `shard_k` (row-parallel) is the largest GPU's share."""
    count = layers * keep["layers"]
    m, n, k = m * keep["m"], n * keep["n"], k * keep["k"]
    if keep["rank"] < 1:  # r·(K+N) = kept·K·N; under tensor parallelism one factor is whole on every GPU
        rank = keep["rank"] * k * n / (k + n)
        stored = rank * (k * shard_k + n * shard_n) * keep["sparse"]
    else:
        stored = k * shard_k * n * shard_n * keep["sparse"]
    n, k = n * shard_n, k * shard_k
    weights = count * stored * dtype_bytes
    if keep["sparse"] < 1:
        weights += count * stored * METADATA_BITS_2_4 / 8
    activations = count * m * (k + n) * dtype_bytes
    if keep["rank"] < 1:
        activations += count * 2 * m * rank * keep["sparse"] * dtype_bytes
    flops = count * 2 * m * stored
    return _cost(gemm, device, count, m, n, k, flops, keep["nonzero"], weights, 0.0, activations)


def _attention(gemm, arch, device, scenario, effects, dtype_bytes, shard=1.0) -> GemmCost:
    prefill = scenario.phase is Phase.prefill
    keep = _keep(effects, gemm, device)
    queries, kv = attention_heads_kept(effects)
    heads, kv_heads = arch.num_attention_heads * queries * shard, arch.num_key_value_heads * kv * shard
    layers = arch.num_hidden_layers * keep["layers"]
    batch = scenario.batch_size
    m = batch * (scenario.seq_len if prefill else 1) * keep["m"]
    score = gemm is Gemm.attn_score
    keys = scenario.seq_len * keep["n" if score else "k"]
    head_dim = arch.head_dim * keep["k" if score else "n"]
    n, k = (keys, head_dim) if score else (head_dim, keys)
    flops = layers * heads * 2 * m * keys * head_dim * (0.5 if prefill else 1.0)
    kv_bytes = layers * batch * keys * head_dim * kv_heads * dtype_bytes
    query_or_output = layers * m * head_dim * heads * dtype_bytes
    return _cost(gemm, device, layers * heads, m, n, k, flops, 1.0, 0.0, kv_bytes, query_or_output)


def _routing(arch: ModelArchitecture, device: DeviceProfile, tokens: int, effects, dtype_bytes: int) -> float:
    """Router and gather/scatter time of dynamic-M methods: the price they pay for skipping tokens.

    Counted in every layer (an upper bound when only some layers route): a hidden->1 router reads
    every token's hidden state, and the kept tokens are gathered before and scattered after.
    """
    skipped = max((e.fraction for e in effects if e.dimension is Dimension.M and e.mode is Mode.dynamic), default=None)
    if skipped is None:
        return 0.0
    flops = 2 * tokens * arch.hidden_size
    moved = (tokens + 4 * tokens * (1 - skipped)) * arch.hidden_size * dtype_bytes
    return arch.num_hidden_layers * max(flops / device.matmul_flops, moved / device.memory_bandwidth)


def largest_share(units: float, ranks: int) -> float:
    """The largest rank's share of `units` whole units (rounded, at least one) split as evenly as whole units allow."""
    whole = max(1, round(units))
    return math.ceil(whole / ranks) / whole


def estimate(
    arch: ModelArchitecture,
    device: DeviceProfile,
    scenario: Scenario,
    effects: Iterable[ResolvedEffect] = (),
    dtype_bytes: int = 2,
    tensor_parallel: int = 1,
) -> Estimate:
    """Roofline cost of one forward step (a prefill, or one decode token) with `effects` applied, on one GPU of
    `tensor_parallel` that run the model sharded (1: the whole model on one device)."""
    if dtype_bytes <= 0:
        raise ValueError(f"dtype_bytes must be positive, got {dtype_bytes}")
    if tensor_parallel < 1:
        raise ValueError(f"tensor_parallel must be 1 or more, got {tensor_parallel}")
    if tensor_parallel > 1 and device.interconnect_bandwidth is None:
        raise ValueError(f"device '{device.name}' has no interconnect bandwidth to price tensor parallelism with")
    effects = tuple(effects)
    batch, layers = scenario.batch_size, arch.num_hidden_layers
    tokens = batch * scenario.seq_len if scenario.phase is Phase.prefill else batch
    hidden, inter, head_dim = arch.hidden_size, arch.intermediate_size, arch.head_dim
    queries, kv = attention_heads_kept(effects)
    qkv_n = (arch.num_attention_heads * queries + 2 * arch.num_key_value_heads * kv) * head_dim
    shapes = {  # (instances, M, K, N)
        Gemm.qkv_proj: (layers, tokens, hidden, qkv_n),
        Gemm.o_proj: (layers, tokens, arch.num_attention_heads * head_dim, hidden),
        Gemm.gate_up_proj: (layers, tokens, hidden, 2 * inter),
        Gemm.down_proj: (layers, tokens, inter, hidden),
        Gemm.lm_head: (1, batch, hidden, arch.vocab_size),
        **{g: (2 * layers if any(e.gemm is g for e in effects) else 0, tokens, hidden, hidden) for g in ADDED_GEMMS},
    }
    keeps = {g: _keep(effects, g, device) for g in Gemm}
    shards = {g: (1.0, 1.0) for g in Gemm}  # (N, K) share of the largest GPU
    attention = largest_share(arch.num_key_value_heads * kv, tensor_parallel)
    shards[Gemm.qkv_proj], shards[Gemm.o_proj] = (attention, 1.0), (1.0, attention)
    shards[Gemm.gate_up_proj] = (largest_share(inter * keeps[Gemm.gate_up_proj]["n"], tensor_parallel), 1.0)
    shards[Gemm.down_proj] = (1.0, largest_share(inter * keeps[Gemm.down_proj]["k"], tensor_parallel))
    rows = tuple(
        _attention(g, arch, device, scenario, effects, dtype_bytes, attention)
        if g in (Gemm.attn_score, Gemm.attn_value)
        else _projection(g, device, *shapes[g], keeps[g], dtype_bytes, *shards[g])
        for g in Gemm
    )
    routing_s = _routing(arch, device, tokens, effects, dtype_bytes)
    sent = communication_s = 0.0
    if tensor_parallel > 1 and device.interconnect_bandwidth:  # a ring all-reduce of each row-parallel output
        reduced = [r for r in rows if r.gemm in (Gemm.o_proj, Gemm.down_proj)]
        sent = sum(r.count * r.m * r.n * dtype_bytes for r in reduced) * 2 * (tensor_parallel - 1) / tensor_parallel
        communication_s = sent / device.interconnect_bandwidth
    return Estimate(
        model=arch.name,
        device=device.name,
        scenario=scenario,
        dtype_bytes=dtype_bytes,
        rows=rows,
        routing_s=routing_s,
        tensor_parallel=tensor_parallel,
        allreduce_bytes=sent,
        communication_s=communication_s,
        time_s=routing_s + sum(r.time_s for r in rows) + communication_s,
        **{
            f: sum(getattr(r, f) for r in rows)
            for f in ("flops", "theoretical_flops", "bytes", "weight_bytes", "kv_bytes")
        },
    )


def theoretical_speedup(
    arch: ModelArchitecture,
    device: DeviceProfile,
    scenario: Scenario,
    effects: Iterable[ResolvedEffect],
    dtype_bytes: int = 2,
    tensor_parallel: int = 1,
) -> float:
    """Dense time over pruned time on the roofline (both on `tensor_parallel` GPUs): the ceiling a measured
    speedup is compared with."""
    dense = estimate(arch, device, scenario, (), dtype_bytes, tensor_parallel)
    return dense.time_s / estimate(arch, device, scenario, effects, dtype_bytes, tensor_parallel).time_s
