"""Operating-point parameters of each built-in adapter, with the bounds the schema enforces.

One adapter, one parameter model. These live in spec/ (no torch) so that validating a
submission never imports the code that applies it; adapters/ implements each name.
"""

from __future__ import annotations

import random
from typing import Annotated, ClassVar, Literal

from pydantic import Field, model_validator

from .catalog import Frozen

Selection = Literal["magnitude", "seeded"]


class DenseParams(Frozen):
    """The unpruned model: the baseline every speedup and quality loss is measured against."""


class LayerDropParams(Frozen):
    """Static depth pruning: remove whole decoder layers."""

    sparsity: float = Field(ge=0.0, le=0.9, description="fraction of decoder layers removed")
    selection: Literal["deepest", "explicit", "seeded"] = Field(
        "deepest",
        description=(
            "which layers: 'deepest' = the contiguous block just before the last layer (where ShortGPT's "
            "Block Influence and SLEB find Llama models most redundant), 'explicit' = `layers`, "
            "'seeded' = a seeded random choice (the paper's simulation mode); the first and last layer "
            "are never chosen by 'deepest' or 'seeded'"
        ),
    )
    layers: list[Annotated[int, Field(ge=0, le=1023)]] | None = Field(
        None, max_length=512, description="0-based indices of the layers to remove, for selection 'explicit'"
    )
    seed: int = Field(0, ge=0, le=2**31 - 1, description="for selection 'seeded'")

    @model_validator(mode="after")
    def _layers_iff_explicit(self) -> LayerDropParams:
        if (self.layers is not None) != (self.selection == "explicit"):
            raise ValueError("'layers' is given exactly when selection is 'explicit'")
        if self.layers is not None and len(set(self.layers)) != len(self.layers):
            raise ValueError("layer indices must be unique")
        return self

    def count(self, num_layers: int) -> int:
        return round(self.sparsity * num_layers)

    def layers_for(self, num_layers: int) -> list[int]:
        """The sorted indices removed from a model of `num_layers` layers (raises if they do not fit)."""
        n = self.count(num_layers)
        if self.selection == "explicit":
            assert self.layers is not None
            if max(self.layers, default=-1) >= num_layers:
                raise ValueError(f"layer {max(self.layers)} does not exist in a {num_layers}-layer model")
            if len(self.layers) != n:
                raise ValueError(
                    f"{len(self.layers)} layers listed but sparsity {self.sparsity} of {num_layers} layers is {n}"
                )
            return sorted(self.layers)
        if n > num_layers - 2:
            raise ValueError(f"cannot remove {n} of {num_layers} layers and keep the first and last")
        if self.selection == "deepest":
            return list(range(num_layers - 1 - n, num_layers - 1))
        return sorted(random.Random(self.seed).sample(range(1, num_layers - 1), n))


class WidthParams(Frozen):
    """Static width pruning: attention heads in whole KV groups, and MLP channels."""

    attention_sparsity: float = Field(
        ge=0.0, le=0.9375, description="fraction of KV groups (and so of query heads) removed in every layer"
    )
    mlp_sparsity: float = Field(ge=0.0, le=0.95, description="fraction of MLP intermediate channels removed")
    selection: Selection = Field(
        "magnitude", description="keep the groups/channels of largest weight norm, or a seeded random choice"
    )
    seed: int = Field(0, ge=0, le=2**31 - 1, description="used when selection is 'seeded'")

    def kept_kv_groups(self, num_kv_heads: int) -> int:
        """KV groups kept; heads go in whole groups so grouped-query attention stays well formed."""
        removed = self.attention_sparsity * num_kv_heads
        if abs(removed - round(removed)) > 1e-6:
            raise ValueError(
                f"attention_sparsity {self.attention_sparsity} of {num_kv_heads} KV groups is not a whole number of groups"
            )
        kept = num_kv_heads - round(removed)
        if kept < 1:
            raise ValueError("at least one KV group must be kept")
        return kept

    def kept_channels(self, intermediate_size: int) -> int:
        return max(1, round((1.0 - self.mlp_sparsity) * intermediate_size))


Projection = Literal["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]
ALL_PROJECTIONS: list[Projection] = ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]


class SublayerDropParams(LayerDropParams):
    """Static depth pruning of one sublayer kind: the attention or the MLP block of chosen layers.

    The residual path stays: a dropped sublayer adds nothing to the residual stream.
    """

    sublayer: Literal["attention", "mlp"] = Field(description="which block of the chosen layers is removed")


class SemiStructuredParams(Frozen):
    """2:4 sparsity along K: in every group of four consecutive input weights, two are zero."""

    projections: list[Projection] = Field(
        default_factory=lambda: list(ALL_PROJECTIONS),
        min_length=1,
        max_length=4,
        description="which GEMMs are sparsified",
    )
    selection: Literal["magnitude"] = Field("magnitude", description="keep the two largest |w| of each group of four")


class LowRankParams(Frozen):
    """W[K,N] becomes A[K,r]·B[r,N] by truncated SVD, r chosen so a `sparsity` share of the parameters goes."""

    sparsity: float = Field(ge=0.0, le=0.95, description="share of each projection's parameters removed")
    projections: list[Projection] = Field(
        default_factory=lambda: list(ALL_PROJECTIONS),
        min_length=1,
        max_length=4,
        description="which GEMMs are factorised",
    )

    def rank(self, k: int, n: int) -> int:
        """r with r·(K+N) ≈ (1 − sparsity)·K·N; at 0 % the full rank min(K, N) keeps the GEMM exact.

        On matrices of 512 and more rows and columns r is rounded down to a multiple of 8: bf16
        tensor cores need 16-byte aligned dimensions, and an unaligned rank ran 2-3x slower than
        dense on an H200 (benchmarks/h200_taxonomy.md).
        """
        if self.sparsity == 0.0:
            return min(k, n)
        rank = int((1.0 - self.sparsity) * k * n / (k + n))
        if min(k, n) >= 512:
            rank -= rank % 8
        return max(1, min(min(k, n), rank))


class HiddenSliceParams(Frozen):
    """Cross-layer width: remove a share of the residual hidden dimension everywhere (SliceGPT-style)."""

    sparsity: float = Field(ge=0.0, le=0.9, description="share of hidden channels removed")
    selection: Selection = Field("magnitude", description="keep the channels of largest embedding norm, or seeded")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="used when selection is 'seeded'")

    def kept(self, hidden_size: int) -> int:
        return max(1, round((1.0 - self.sparsity) * hidden_size))


class TokenRoutingParams(Frozen):
    """Dynamic depth (Mixture-of-Depths on the MLP): per token, a routing rule decides whether a routed MLP runs.

    Routed tokens are gathered, run through the MLP on a smaller M and scattered back; the others
    keep their residual. The decision depends only on the token's sequence row and position (never on
    later tokens), so decoding with a KV cache makes the same choices as a full forward. Capacity:
    every aligned window of 16 positions of one sequence sends exactly (1 - sparsity) * 16 tokens
    through each routed MLP.
    """

    window: ClassVar[int] = 16

    sparsity: float = Field(
        ge=0.0,
        le=0.95,
        description="share of tokens that skip each routed MLP; a whole number of tokens of a 16-position window (multiple of 1/16)",
    )
    sublayer: Literal["mlp"] = Field("mlp", description="which sublayer is routed")
    layers: Literal["all", "alternate"] = Field(
        "alternate", description="route every layer, or every second layer starting with layer 1 (MoD)"
    )
    policy: Literal["seeded"] = Field(
        "seeded",
        description=(
            "'seeded': a seeded choice of the routed positions of every window (the paper's simulation mode: latency "
            "depends on how many tokens skip, not which). A score-driven policy is left out: an exact top-k per window "
            "is not causal, a threshold's capacity is only approximate, and an untrained router would only add noise"
        ),
    )
    router_rank: int = Field(
        0,
        ge=0,
        le=1024,
        description="the router that runs on every token (its cost is measured): 0 = linear hidden->1, r>0 = hidden->r->1",
    )
    seed: int = Field(0, ge=0, le=2**31 - 1, description="seeds the choice of routed positions")

    def capacity(self) -> int:
        """Tokens of every window that pass (raises when the sparsity is not a whole number of tokens)."""
        kept = (1.0 - self.sparsity) * self.window
        if abs(kept - round(kept)) > 1e-6:
            raise ValueError(
                f"sparsity {self.sparsity} is not a whole number of tokens of a {self.window}-token routing window "
                f"(use a multiple of 1/{self.window}, e.g. 0.5 or 0.875)"
            )
        return round(kept)

    def routed_layers(self, num_layers: int) -> list[int]:
        return list(range(num_layers)) if self.layers == "all" else list(range(1, num_layers, 2))


class SparseAttentionParams(Frozen):
    """Dynamic NK of attention: each query block keeps a share of its causal key blocks (sink and local always).

    Query block i (positions i*block_size ...) sees key blocks 0..i. It keeps the first `sink_blocks`,
    the last `local_blocks` (the diagonal included) and a seeded choice of the others, so that
    round((1 - sparsity) * (i + 1)) blocks are kept, never fewer than sink and local together. The
    choice depends only on (seed, layer, i), so decoding a token uses the key blocks of its query block.
    """

    sparsity: float = Field(ge=0.0, le=0.95, description="share of causal key blocks dropped per query block")
    block_size: int = Field(
        64, ge=16, le=1024, multiple_of=16, description="tokens per query and key block (whole kernel tiles of 16)"
    )
    sink_blocks: int = Field(1, ge=0, le=64, description="first key blocks always kept")
    local_blocks: int = Field(1, ge=1, le=64, description="most recent key blocks always kept (the diagonal included)")
    policy: Literal["seeded"] = Field("seeded", description="a seeded choice of the other key blocks per query block")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="seeds the choice of key blocks")

    def required_blocks(self, query_block: int) -> set[int]:
        """The sink and local key blocks of a query block: kept whatever the sparsity."""
        sink = range(min(self.sink_blocks, query_block + 1))
        local = range(max(0, query_block - self.local_blocks + 1), query_block + 1)
        return set(sink) | set(local)

    def kept_block_count(self, query_block: int) -> int:
        causal = query_block + 1
        return min(causal, max(len(self.required_blocks(query_block)), round((1.0 - self.sparsity) * causal)))

    def kept_blocks(self, query_block: int, layer: int) -> list[int]:
        """The sorted key blocks that query block `query_block` of layer `layer` attends to."""
        required = self.required_blocks(query_block)
        others = [j for j in range(query_block + 1) if j not in required]
        random.Random(f"{self.seed}/{layer}/{query_block}").shuffle(others)
        return sorted(required | set(others[: self.kept_block_count(query_block) - len(required)]))


class UnstructuredParams(Frozen):
    """Single weights set to zero by magnitude; dense kernels run them at full cost."""

    sparsity: float = Field(ge=0.0, le=0.99, description="share of each projection's weights zeroed")
    projections: list[Projection] = Field(
        default_factory=lambda: list(ALL_PROJECTIONS), min_length=1, max_length=4, description="which GEMMs are pruned"
    )
