"""The GEMMs a model really executes in one prefill, and the check of a declaration against them.

Declared effects are checked, not trusted (DESIGN.md): a TorchDispatchMode sees each matrix
product as the kernels get it (mm, addmm, bmm, baddbmm; linear, matmul and SDPA itself under
inference_mode; the 2:4 sparse kernels; the SDPA backend ops; flex_attention), so a method cannot
describe a shape it does not run. Module hooks keep a stack of names: a product belongs to
"router" inside a module named router, else to the innermost known projection name, else to
attn_score/attn_value (attention kernels, or the two batched products of an eager attention
module, in order), else to "other". Attention follows the cost model: one record per call with
count = query heads, M = batch x query tokens.

flex_attention is caught when it runs eagerly (dynamo refuses dispatch modes, so its compile
wrapper is switched off during the trace). TODO: a flex_attention that an adapter compiles itself
cannot run under a dispatch mode; adapters/sparse_attention.py's `kept_pairs(seq_len, params)`
would then have to supply the pairs.
"""

from __future__ import annotations

import math
from collections import defaultdict
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any
from unittest import mock

import torch
import torch.nn.attention.flex_attention as flex_module
from torch._higher_order_ops.flex_attention import flex_attention as FLEX_HOP
from torch.sparse import SparseSemiStructuredTensor
from torch.utils._python_dispatch import TorchDispatchMode

from prunereg.adapters import semi_structured  # registers prunereg::sparse_linear_2_4
from prunereg.adapters.base import ADDED_LINEARS, PROJECTIONS
from prunereg.harness.latency import scenario_ids
from prunereg.spec.catalog import ModelArchitecture, Scenario, devices
from prunereg.spec.costmodel import GemmCost, estimate
from prunereg.spec.effects import ResolvedEffect
from prunereg.spec.results import GemmTrace
from prunereg.spec.taxonomy import ADDED_GEMMS, Dimension, Gemm, Granularity

NAMES = (
    {name: gemm for gemm, (_, names) in PROJECTIONS.items() for name in (gemm, *names)}
    | {"lm_head": "lm_head"}
    | {name: gemm for gemm, names in ADDED_LINEARS.items() for name in names}
)
ATTENTION_NAMES = {"self_attn", "attn", "attention", "self_attention"}
aten = torch.ops.aten
PRODUCTS = {
    aten.mm: (0, 1),
    aten.addmm: (1, 2),
    aten.bmm: (0, 1),
    aten.baddbmm: (1, 2),
    aten.matmul: (0, 1),
    aten.linear: (0, 1),
}
SPARSE_2_4: dict[Any, tuple[str, int]] = {
    getattr(aten, op): (backend, dense)
    for op, backend, dense in [  # dense: the activation's position
        ("_sparse_semi_structured_linear", "CUTLASS", 0),
        ("_sparse_semi_structured_mm", "CUTLASS", 2),
        ("_sparse_semi_structured_addmm", "CUTLASS", 3),
        ("_cslt_sparse_mm", "cuSPARSELt", 1),
    ]
    if hasattr(aten, op)
}
SDPA = {
    getattr(aten, op)
    for op in (
        "scaled_dot_product_attention",
        "_scaled_dot_product_flash_attention_for_cpu",
        "_scaled_dot_product_flash_attention",
        "_scaled_dot_product_efficient_attention",
        "_scaled_dot_product_cudnn_attention",
        "_scaled_dot_product_attention_math",
        "_scaled_dot_product_fused_attention_overrideable",
    )
    if hasattr(aten, op)
}
MASKED_SHARE = 0.01
"""A weight with more exact zeros than this runs as "masked dense": its zeros cost full price."""


MASKED_BIAS = -1e4
"""An additive attention bias at or below this removes the pair: exp of it is 0 in every float dtype. Not
the dtype's minimum: on an H200 SDPA handed a boolean mask to its CUDA kernels as a bf16 bias of -65536."""


def _allowed(mask: torch.Tensor, b: int, h: int, q: int, k: int) -> int:
    """(query, key) pairs a boolean or additive mask lets through, over batch and heads."""
    mask = mask[..., -q:, :k]
    ok = mask if mask.dtype == torch.bool else mask > MASKED_BIAS
    return int(ok.sum()) * (b * h * q * k) // ok.numel()


def _causal(q: int, k: int) -> int:
    """Pairs of one head under SDPA's is_causal (top-left aligned lower triangle)."""
    n = min(q, k)
    return n * (n + 1) // 2 + (q - n) * k


class _Tracer(TorchDispatchMode):
    supports_higher_order_operators = True

    def __init__(self, batch: int):
        super().__init__()
        self.batch = batch
        self.stack: list[tuple[str, dict | None]] = []
        self.records: defaultdict[tuple[str, int, int, int, str], list[float]] = defaultdict(lambda: [0, 0.0, 0.0])
        """(GEMM, M, N, K, kernel) -> [calls, executed FLOPs, effective FLOPs]."""

    def add(self, gemm, count, m, n, k, executed, effective, kernel):
        record = self.records[(gemm, int(m), int(n), int(k), kernel)]
        record[:] = record[0] + int(count), record[1] + float(executed), record[2] + float(effective)

    def owner(self) -> tuple[str, dict | None]:
        """ "router", the innermost known projection, or ("attention", the attention module's frame)."""
        if any(name == "router" for name, _ in self.stack):
            return "router", None
        for name, frame in reversed(self.stack):
            if name in NAMES or frame is not None:
                return NAMES.get(name, "attention"), frame
        return "other", None

    def __torch_dispatch__(self, func, types, args: tuple[Any, ...] = (), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        packet = getattr(func, "_overloadpacket", None)
        if packet in PRODUCTS:
            self.product(packet is aten.linear, *(args[i] for i in PRODUCTS[packet]))
        elif packet is torch.ops.prunereg.sparse_linear_2_4:
            x, packed, _, n = args
            self.sparse(f"cuSPARSELt, {semi_structured.algorithm(x, packed, n)}", 0, args, out)
        elif packet in SPARSE_2_4:
            self.sparse(*SPARSE_2_4[packet], args, out)
        elif packet in SDPA:
            self.sdpa({a.name: v for a, v in zip(func._schema.arguments, args)} | kwargs)
        elif func is FLEX_HOP:
            self.flex(args[0], args[1], args[2], args[4])
        return out

    def product(self, linear: bool, a: torch.Tensor, b: torch.Tensor):
        b = b.t() if linear else b
        kind, frame = self.owner()
        if kind == "attention" and a.dim() >= 3 and b.dim() >= 3:
            return self.eager_attention(a, b, frame)
        k, n, batched = a.shape[-1], b.shape[-1], b.dim() >= 3
        batch = math.prod(torch.broadcast_shapes(a.shape[:-2], b.shape[:-2])) if batched else 1
        m = a.shape[-2] if batched else a.numel() // k
        flops, kind = 2 * batch * m * n * k, "other" if kind == "attention" else kind
        if isinstance(b, SparseSemiStructuredTensor):
            backend = "cuSPARSELt" if "CUSPARSELT" in type(b).__name__.upper() else "CUTLASS"
            return self.add(kind, batch, m, n, k, flops / 2, flops / 2, f"sparse 2:4 ({backend})")
        nonzero = float((b != 0).sum()) / max(b.numel(), 1)
        self.add(
            kind, batch, m, n, k, flops, flops * nonzero, "masked dense" if nonzero < 1 - MASKED_SHARE else "dense"
        )

    def sparse(self, backend: str, position: int, args, out):
        """A 2:4 kernel gets packed weights: K and M come from the activation (rows, or K×M), N from the output."""
        x = args[position]
        k, m = (x.shape[-1], x.numel() // x.shape[-1]) if position == 0 else x.shape[-2:]
        n = out.numel() // m
        self.add(self.owner()[0], 1, m, n, k, m * n * k, m * n * k, f"sparse 2:4 ({backend})")  # half of 2·M·N·K

    def attention(self, q, k, v, executed, allowed, kernel):
        """One attn_score and one attn_value record; `executed`/`allowed` are pairs over batch and heads."""
        heads, d, keys, dv = q.shape[-3], q.shape[-1], k.shape[-2], v.shape[-1]
        m = q.numel() // (heads * d)
        self.add(Gemm.attn_score.value, heads, m, keys, d, 2 * d * executed, 2 * d * allowed, kernel)
        self.add(Gemm.attn_value.value, heads, m, dv, keys, 2 * dv * executed, 2 * dv * allowed, kernel)

    def sdpa(self, named: dict):
        q, k, v = named["query"], named["key"], named["value"]
        h, lq, lk = q.shape[-3], q.shape[-2], k.shape[-2]
        b = q.numel() // (h * lq * q.shape[-1])
        every, mask = b * h * lq * lk, named.get("attn_mask", named.get("attn_bias"))
        if mask is None:
            causal = named.get("is_causal", False)
            pairs = b * h * _causal(lq, lk) if causal else every
            return self.attention(q, k, v, pairs, pairs, "causal (SDPA)" if causal else "dense (SDPA)")
        allowed = _allowed(mask, b, h, lq, lk)
        self.attention(q, k, v, every, allowed, "masked dense (SDPA)" if allowed < every else "dense (SDPA)")

    def eager_attention(self, a, b, frame):
        """QKᵀ then PV, in order within one call of an attention module, masked by its `attention_mask`."""
        heads, q_len = math.prod(a.shape[:-2]) // self.batch, a.shape[-2]
        score = frame["products"] % 2 == 0
        frame["products"] += 1
        keys, d = (b.shape[-1], a.shape[-1]) if score else (a.shape[-1], b.shape[-1])
        every = self.batch * heads * q_len * keys
        allowed = every if frame["mask"] is None else _allowed(frame["mask"], self.batch, heads, q_len, keys)
        gemm, n, k = (Gemm.attn_score, keys, d) if score else (Gemm.attn_value, d, keys)
        kernel = "masked dense (eager)" if allowed < every else "dense (eager)"
        self.add(gemm.value, heads, self.batch * q_len, n, k, 2 * d * every, 2 * d * allowed, kernel)

    def flex(self, q, k, v, block_mask):
        """Pairs in the key blocks each query block visits; inside partial blocks the mask_mod decides."""
        lq, lk, (q_block, kv_block, mask_mod) = q.shape[-2], k.shape[-2], block_mask[-3:]

        def grid(count, indices):
            valid = (torch.arange(indices.shape[-1], device=q.device) < count[..., None]).int()
            blocks = torch.zeros(*count.shape, -(-lk // kv_block), dtype=torch.int, device=q.device)
            blocks = blocks.scatter_add(-1, indices.long(), valid) > 0
            return blocks.repeat_interleave(q_block, -2).repeat_interleave(kv_block, -1)[..., :lq, :lk]

        partial = grid(*block_mask[2:4])
        full = grid(*block_mask[4:6]) if block_mask[4] is not None else torch.zeros_like(partial)
        mb, mh = partial.shape[:2]
        inside = flex_module.create_mask(mask_mod, mb, mh, lq, lk, device=q.device) if mask_mod is not None else True
        scale = q.shape[0] * q.shape[1] // (mb * mh)
        visited, allowed = int((partial | full).sum()) * scale, int((full | (partial & inside)).sum()) * scale
        self.attention(q, k, v, visited, allowed, "block-sparse (flex_attention)")


def trace_forward(model: torch.nn.Module, input_ids: torch.Tensor) -> list[GemmTrace]:
    """Every matrix product of one prefill forward (use_cache=False, logits_to_keep=1), grouped by shape."""
    tracer = _Tracer(batch=input_ids.shape[0])

    def push(name, module, args, kwargs):
        attention = name in ATTENTION_NAMES or type(module).__name__.endswith("Attention")
        mask = kwargs.get("attention_mask")
        mask = mask if isinstance(mask, torch.Tensor) else None
        tracer.stack.append((name, {"mask": mask, "products": 0} if attention else None))

    def pop(*_):
        tracer.stack.pop()

    with ExitStack() as stack:
        for path, module in model.named_modules():
            name = path.rsplit(".", 1)[-1]
            stack.callback(
                module.register_forward_pre_hook(lambda m, a, kw, n=name: push(n, m, a, kw), with_kwargs=True).remove
            )
            stack.callback(module.register_forward_hook(pop, always_call=True).remove)
        if hasattr(flex_module, "_FLEX_ATTENTION_DISABLE_COMPILE_DEBUG"):
            stack.enter_context(mock.patch.object(flex_module, "_FLEX_ATTENTION_DISABLE_COMPILE_DEBUG", True))
        stack.enter_context(torch.no_grad())
        stack.enter_context(tracer)
        model(input_ids.to(next(model.parameters()).device), use_cache=False, logits_to_keep=1)
    order = {g.value: i for i, g in enumerate(Gemm)}
    traces = [
        GemmTrace(gemm=g, count=int(c), m=m, n=n, k=k, flops=f, effective_flops=e, kernel=kernel)
        for (g, m, n, k, kernel), (c, f, e) in tracer.records.items()
    ]
    return sorted(traces, key=lambda t: (order.get(t.gemm, len(order)), t.gemm, -t.flops))


TOLERANCE = 0.03
"""Absolute difference allowed between the declared and the observed kept share of a GEMM's FLOPs, for a GEMM
whose effects are not all counted in whole units (routing, key blocks, ranks, weights) or that declares none."""

EXACT = 1e-9
"""The difference allowed where every effect on a GEMM removes whole counted units (COUNTED): float rounding only."""

COUNTED = frozenset(
    {
        Granularity.layer,
        Granularity.sublayer,
        Granularity.kv_group,
        Granularity.head,
        Granularity.channel,
        Granularity.hidden,
    }
)
"""Granularities whose removed share is a count over a count the pruned model's shapes show exactly (three of
eight layers, 288 of 384 channels): the effects resolve to that count (AdapterParams.removed_share), so the
traced share must equal the declared one, with no rounding allowed."""


def rounding(effect: ResolvedEffect, arch: ModelArchitecture, scenario: Scenario) -> float:
    """How far from its declared share an adapter may land by keeping whole units of the granularity.

    Half a unit of what is counted: tokens of a routing window (at least 16), key blocks per query
    block (64-token blocks: (seq_len/64 + 1)/2 on average under causality); a floored rank costs at
    most (K+N)/(K·N) <= 2/min(K, N) of the projections; 2:4, single weights and the COUNTED
    granularities (resolved to the exact count removed) allow none.
    """
    units = {
        Granularity.token: 16,
        Granularity.key_block: (scenario.seq_len / 64 + 1) / 2,
        Granularity.rank: min(arch.hidden_size, arch.num_key_value_heads * arch.head_dim, arch.intermediate_size) / 4,
    }
    return 0.5 / units[effect.granularity] if effect.granularity in units else 0.0


@dataclass(frozen=True)
class Declared:
    """One GEMM kind as the cost model prices the declaration; `slack` is the rounding it allows."""

    gemm: Gemm
    dense: GemmCost
    pruned: GemmCost
    effects: tuple[tuple[ResolvedEffect, bool], ...]  # (effect, inherited from qkv_proj's heads)
    slack: float

    @property
    def exact(self) -> bool:
        """Every effect on this GEMM removes whole counted units, so its kept share is known exactly."""
        return bool(self.effects) and all(e.granularity in COUNTED for e, _ in self.effects)

    def allowed(self, tolerance: float) -> float:
        return EXACT if self.exact else tolerance + self.slack

    @property
    def kept(self) -> float:
        return self.pruned.theoretical_flops / self.dense.theoretical_flops if self.dense.theoretical_flops else 1.0

    def describe(self) -> str:
        removed = [
            f"{_pct(e.fraction)} of {'heads' if inherited else e.dimension.value} removed"
            for e, inherited in self.effects
            if e.fraction > 0
        ]
        p = self.pruned
        return f"declared {', '.join(removed) or 'nothing removed'} (M×N×K = {p.m:g}×{p.n:g}×{p.k:g}, {p.count:g} instances)"


def declare(arch: ModelArchitecture, scenario: Scenario, effects) -> list[Declared]:
    """The cost model's dense and pruned rows per GEMM kind (FLOPs do not depend on the device)."""
    effects, device = list(effects), devices()["cpu-generic"]
    dense, pruned = estimate(arch, device, scenario, ()), estimate(arch, device, scenario, effects)
    heads = [
        (e, True)
        for e in effects
        if e.gemm is Gemm.qkv_proj
        and e.dimension is Dimension.N
        and e.granularity in (Granularity.kv_group, Granularity.head)
    ]
    declared = []
    for g in Gemm:
        own = [(e, False) for e in effects if e.gemm is g] + (heads if g in (Gemm.attn_score, Gemm.attn_value) else [])
        if g in ADDED_GEMMS and not own:
            continue  # not declared, so not run: an observed one is reported as extra
        slack = sum(rounding(e, arch, scenario) for e, _ in own)
        declared.append(Declared(g, dense.row(g), pruned.row(g), tuple(own), slack))
    return declared


@dataclass(frozen=True)
class GemmCheck:
    """One GEMM kind of the check: what each model ran, the kept shares of FLOPs, the mismatch if any."""

    gemm: str
    dense: tuple[GemmTrace, ...]
    pruned: tuple[GemmTrace, ...]
    declared: float | None
    observed: float | None
    mismatch: str | None
    added: bool = False
    """A GEMM the dense model lacks: `declared` and `observed` are then shares of the declared FLOPs."""


def _pct(share: float) -> str:
    return f"{share * 100:.3g} %"


def _shapes(traces) -> str:
    return " + ".join(f"{t.m}×{t.n}×{t.k} ×{t.count}" for t in traces) or "nothing"


def rows(declared: list[Declared], observed_dense, observed_pruned, tolerance: float = TOLERANCE) -> list[GemmCheck]:
    def of(traces, gemm):
        return tuple(t for t in traces if t.gemm == gemm)

    out = []
    for d in declared:
        g = d.gemm.value
        dense, pruned = of(observed_dense, g), of(observed_pruned, g)
        if d.gemm in ADDED_GEMMS:
            out.append(_added(d, dense, pruned, tolerance))
            continue
        total = sum(_kept_flops(t, d.exact) for t in dense)
        observed = sum(_kept_flops(t, d.exact) for t in pruned) / total if total else None
        problem = None
        if observed is None:
            problem = f"{g}: the dense model ran no {g} product, so its declaration cannot be checked"
        elif abs(observed - d.kept) > d.allowed(tolerance):
            problem = f"{g}: {d.describe()}, observed {_shapes(pruned)} (kept {_pct(observed)} of FLOPs, declared {_pct(d.kept)})"
        out.append(GemmCheck(g, dense, pruned, d.kept, observed, problem))
    for g in sorted({t.gemm for t in (*observed_dense, *observed_pruned)} - {d.gemm.value for d in declared}):
        dense, pruned = of(observed_dense, g), of(observed_pruned, g)
        extra = (
            None
            if dense or g == "router"
            else f"{g}: the pruned model runs {_shapes(pruned)}, which the dense model does not"
        )
        out.append(GemmCheck(g, dense, pruned, None, None, extra))
    return out


def _kept_flops(trace: GemmTrace, exact: bool) -> float:
    """What a GEMM's kept share is counted in. Counted effects (`Declared.exact`) show in the shapes, so their share
    is the shapes' FLOPs: weight values cannot move it, and random bf16 weights hold a few exact zeros (about one in
    10⁵ from a normal init), which would move the effective FLOPs of dense and pruned layers apart by more than EXACT.
    Every other effect is counted in effective FLOPs, where masked weights show."""
    return trace.flops if exact else trace.effective_flops


def _added(d: Declared, dense, pruned, tolerance: float) -> GemmCheck:
    """A declared GEMM the dense model lacks: the pruned model must run the declared FLOPs, within the tolerance."""
    g, expected = d.gemm.value, d.pruned.theoretical_flops
    observed = sum(t.effective_flops for t in pruned) / expected
    problem = None
    if dense:
        problem = f"{g}: the dense model runs {_shapes(dense)}, but {g} is a GEMM only a pruned model adds"
    elif abs(observed - 1) > d.allowed(tolerance):
        p = d.pruned
        problem = (
            f"{g}: declared added, M×N×K = {p.m:g}×{p.n:g}×{p.k:g} ×{p.count:g}; observed {_shapes(pruned)} "
            f"({_pct(observed)} of the declared FLOPs)"
        )
    return GemmCheck(g, dense, pruned, 1.0, observed, problem, added=True)


def compare(declared: list[Declared], observed_dense, observed_pruned, tolerance: float = TOLERANCE) -> list[str]:
    """One message per GEMM kind whose observed kept share of FLOPs is off its declared share.

    Shares are pruned over dense, traced and priced alike, so whatever the cost model leaves out
    (causal rounding, kernel splits) cancels. Routers and "other" never mismatch, but "other"
    products that only the pruned model runs do.
    """
    return [r.mismatch for r in rows(declared, observed_dense, observed_pruned, tolerance) if r.mismatch]


def check_declaration(
    dense_model,
    pruned_model,
    arch: ModelArchitecture,
    scenario: Scenario,
    effects,
    tolerance: float = TOLERANCE,
    tokenizer=None,
) -> tuple[list[GemmCheck], list[str]]:
    """Trace both models on the scenario's prompt (`harness.latency.scenario_ids`) and compare with the declaration."""
    if scenario.seq_len % 64:
        raise ValueError(
            f"seq_len {scenario.seq_len} is not a multiple of 64: block-sparse attention needs whole blocks"
        )
    ids, _ = scenario_ids(dense_model.config.vocab_size, scenario, tokenizer)
    table = rows(
        declare(arch, scenario, effects), trace_forward(dense_model, ids), trace_forward(pruned_model, ids), tolerance
    )
    return table, [r.mismatch for r in table if r.mismatch]
