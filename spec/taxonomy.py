"""The GEMM-centric taxonomy of the paper, as data: GEMM kinds, dimensions and pruning families.

For Y[M,N] = X[M,K] . W[K,N] inside a decoder layer, a pruning method shrinks M (tokens),
N (outputs) or K (the reduction), statically (the same for every input) or dynamically
(chosen per token). Everything downstream (schema, checks, cost model, leaderboard) reads
these tables instead of repeating them.
"""

from __future__ import annotations

from enum import Enum


class Gemm(str, Enum):
    """The matrix products of a decoder-only transformer (DESIGN.md table)."""

    qkv_proj = "qkv_proj"
    o_proj = "o_proj"
    gate_up_proj = "gate_up_proj"
    down_proj = "down_proj"
    attn_score = "attn_score"
    attn_value = "attn_value"
    lm_head = "lm_head"
    shortcut_rotation = "shortcut_rotation"


GEMM_SHAPES: dict[Gemm, tuple[str, str, str]] = {
    Gemm.qkv_proj: ("tokens", "hidden", "(heads + 2*kv_heads)*head_dim"),
    Gemm.o_proj: ("tokens", "heads*head_dim", "hidden"),
    Gemm.gate_up_proj: ("tokens", "hidden", "2*intermediate"),
    Gemm.down_proj: ("tokens", "intermediate", "hidden"),
    Gemm.attn_score: ("query tokens", "head_dim", "key tokens"),
    Gemm.attn_value: ("query tokens", "key tokens", "head_dim"),
    Gemm.lm_head: ("output tokens", "hidden", "vocab"),
    Gemm.shortcut_rotation: ("tokens", "hidden", "hidden"),
}
"""(M, K, N) of each GEMM in words, for tables and the site."""

ADDED_GEMMS: dict[Gemm, str] = {
    Gemm.shortcut_rotation: (
        "SliceGPT's Q_l^T Q_(l+1) on each residual connection (two per layer) where the rotation changes between "
        "blocks; hidden effects declare its kept K and N"
    ),
}
"""GEMMs a dense model does not run. A method that runs one declares it by declaring its hidden K and N
effects (fraction 0 keeps it at full size); the cost model prices it only then, and the tracer checks
that the pruned model runs exactly the declared FLOPs."""

ATTENTION_GEMMS = (Gemm.qkv_proj, Gemm.o_proj, Gemm.attn_score, Gemm.attn_value)
MLP_GEMMS = (Gemm.gate_up_proj, Gemm.down_proj)
LAYER_GEMMS = ATTENTION_GEMMS + MLP_GEMMS


class Dimension(str, Enum):
    M = "M"
    N = "N"
    K = "K"


class Mode(str, Enum):
    static = "static"
    dynamic = "dynamic"


class Granularity(str, Enum):
    """The unit in which a dimension is removed; the cost model and the checks key on it."""

    layer = "layer"  # whole decoder layers (M removed for every token of those layers)
    sublayer = "sublayer"  # the attention or the MLP block of a layer
    token = "token"  # per-token routing (dynamic M)
    kv_group = "kv_group"  # attention heads, in whole grouped-query KV groups
    head = "head"  # single attention heads
    channel = "channel"  # MLP intermediate channels
    hidden = "hidden"  # the residual hidden dimension (cross-layer)
    rank = "rank"  # low-rank factorisation
    pattern_2_4 = "2:4"  # two of every four weights along K
    key_block = "key_block"  # blocks of keys per query block
    weight = "weight"  # single weights, no structure


class Family(str, Enum):
    dense = "dense"
    static_depth = "static_depth"
    dynamic_depth = "dynamic_depth"
    static_k_2_4 = "static_k_2_4"
    static_k_low_rank = "static_k_low_rank"
    static_width = "static_width"
    static_cross_layer = "static_cross_layer"
    dynamic_attention = "dynamic_attention"
    unstructured = "unstructured"


FAMILY_LABELS: dict[Family, str] = {
    Family.dense: "dense baseline",
    Family.static_depth: "static M, depth",
    Family.dynamic_depth: "dynamic M, depth",
    Family.static_k_2_4: "static K, 2:4",
    Family.static_k_low_rank: "static K, low rank",
    Family.static_width: "static NK, width",
    Family.static_cross_layer: "static NK, cross-layer",
    Family.dynamic_attention: "dynamic NK, attention",
    Family.unstructured: "unstructured",
}

FAMILY_EFFECTS: dict[Family, frozenset[tuple[Dimension, Mode, Granularity]]] = {
    Family.dense: frozenset(),
    Family.static_depth: frozenset(
        {(Dimension.M, Mode.static, Granularity.layer), (Dimension.M, Mode.static, Granularity.sublayer)}
    ),
    Family.dynamic_depth: frozenset({(Dimension.M, Mode.dynamic, Granularity.token)}),
    Family.static_k_2_4: frozenset({(Dimension.K, Mode.static, Granularity.pattern_2_4)}),
    Family.static_k_low_rank: frozenset({(Dimension.K, Mode.static, Granularity.rank)}),
    Family.static_width: frozenset(
        {
            (Dimension.N, Mode.static, Granularity.kv_group),
            (Dimension.K, Mode.static, Granularity.kv_group),
            (Dimension.N, Mode.static, Granularity.head),
            (Dimension.K, Mode.static, Granularity.head),
            (Dimension.N, Mode.static, Granularity.channel),
            (Dimension.K, Mode.static, Granularity.channel),
        }
    ),
    Family.static_cross_layer: frozenset(
        {(Dimension.N, Mode.static, Granularity.hidden), (Dimension.K, Mode.static, Granularity.hidden)}
    ),
    Family.dynamic_attention: frozenset(
        {(Dimension.N, Mode.dynamic, Granularity.key_block), (Dimension.K, Mode.dynamic, Granularity.key_block)}
    ),
    Family.unstructured: frozenset({(Dimension.K, Mode.static, Granularity.weight)}),
}
"""Which (dimension, mode, granularity) a family may declare; anything else is a validation error."""


VALUE_DESCRIPTIONS: dict[type[Enum], dict[str, str]] = {
    Gemm: {
        "qkv_proj": "the query, key and value projections: M = tokens, K = hidden, N = (heads + 2·kv_heads)·head_dim",
        "o_proj": "the attention output projection: M = tokens, K = heads·head_dim, N = hidden",
        "gate_up_proj": "the MLP gate and up projections: M = tokens, K = hidden, N = 2·intermediate",
        "down_proj": "the MLP down projection: M = tokens, K = intermediate, N = hidden",
        "attn_score": "QKᵀ per query head: M = query tokens, K = head_dim, N = key tokens",
        "attn_value": "PV per query head: M = query tokens, K = key tokens, N = head_dim",
        "lm_head": "the output projection to the vocabulary: M = output tokens, K = hidden, N = vocab",
        "shortcut_rotation": ADDED_GEMMS[Gemm.shortcut_rotation],
    },
    Dimension: {
        "M": "the tokens (rows of X and Y): removed, the GEMM runs for fewer tokens or in fewer layers",
        "N": "the outputs (columns of W and Y): removed, W loses columns and the next GEMM's K shrinks with them",
        "K": "the reduction (columns of X, rows of W): removed, each output sums over fewer inputs",
    },
    Mode: {
        "static": "the same units are removed for every input: the pruned model is smaller",
        "dynamic": "the units removed are chosen per token or input at run time: the weights stay",
    },
    Granularity: {
        "layer": "whole decoder layers: every GEMM of the layer is gone for every token",
        "sublayer": "the attention block or the MLP block of a layer, for every token; the residual path stays",
        "token": "single tokens that a router sends past a layer's block (dynamic M)",
        "kv_group": (
            "a grouped-query KV group: its key and value heads, the query heads that read them, and the "
            "matching o_proj columns; the KV cache shrinks with it"
        ),
        "head": (
            "single query heads (q rows and o_proj columns), every key and value head kept; no built-in adapter "
            "removes these (width removes kv_group): only a checkpoint or plugin adapter may declare them"
        ),
        "channel": "MLP intermediate channels: a gate and an up row and a down_proj column each",
        "hidden": "channels of the residual hidden dimension, in the embedding, every projection and the norms",
        "rank": "rank of a factorised weight: W[K,N] becomes A[K,r]·B[r,N]",
        "2:4": "two of every four consecutive weights along K are zero, run on 2:4 sparse tensor cores where present",
        "key_block": "blocks of keys a query block skips (QKᵀ N and PV K), chosen per input",
        "weight": "single weights set to zero, with no structure: dense kernels still multiply them",
    },
    Family: {
        "dense": "nothing removed: the baseline every speedup and quality loss is measured against",
        "static_depth": "static M: whole layers or whole attention / MLP sublayers removed for every token",
        "dynamic_depth": "dynamic M: a layer's block skipped for some tokens, chosen per token by a router",
        "static_k_2_4": "static K: 2:4 semi-structured sparsity of the projections",
        "static_k_low_rank": "static K: each projection factorised into two low-rank matrices",
        "static_width": "static N and K: attention heads (in KV groups) and MLP channels of every layer",
        "static_cross_layer": "static N and K across layers: the residual hidden dimension itself",
        "dynamic_attention": "dynamic N and K of attention: key blocks skipped per query block",
        "unstructured": "single weights zeroed: no speedup on dense kernels, and the registry says so",
    },
}
"""What each value of the taxonomy's enums means: the published schemas give each value its description
(spec/submission.py PortableJsonSchema)."""
