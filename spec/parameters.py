"""Operating-point parameters of each built-in adapter, with the bounds the schema enforces.

One adapter, one parameter model. These live in spec/ (no torch) so that validating a
submission never imports the code that applies it; adapters/ implements each name. Every
model says, from a catalog architecture alone, whether a point fits it (`misfit`) and what the
pruned model's config and parameter count are: the contract each adapter is tested against.
"""

from __future__ import annotations

import random
from typing import Annotated, ClassVar, Literal

from pydantic import Field, model_validator

from .calibration import Calibration
from .catalog import Frozen, ModelArchitecture

Selection = Literal["magnitude", "seeded"]


def linear_shapes(arch: ModelArchitecture) -> dict[str, tuple[int, int]]:
    """(K, N) = (in, out) features of each Linear of a decoder layer, by its transformers attribute name."""
    h, i = arch.hidden_size, arch.intermediate_size
    q, kv = arch.num_attention_heads * arch.head_dim, arch.num_key_value_heads * arch.head_dim
    return {
        "q_proj": (h, q),
        "k_proj": (h, kv),
        "v_proj": (h, kv),
        "o_proj": (q, h),
        "gate_proj": (h, i),
        "up_proj": (h, i),
        "down_proj": (i, h),
    }


def attention_parameters(arch: ModelArchitecture) -> int:
    """Weights and biases of one attention block (Qwen2 biases q/k/v; Llama's attention_bias also o)."""
    shapes = linear_shapes(arch)
    weights = sum(k * n for name, (k, n) in shapes.items() if name in ("q_proj", "k_proj", "v_proj", "o_proj"))
    if not arch.attention_bias:
        return weights
    biased = ("q_proj", "k_proj", "v_proj") if arch.model_type == "qwen2" else ("q_proj", "k_proj", "v_proj", "o_proj")
    return weights + sum(shapes[name][1] for name in biased)


def mlp_parameters(arch: ModelArchitecture) -> int:
    return 3 * arch.hidden_size * arch.intermediate_size


def parameter_count(arch: ModelArchitecture) -> int:
    """Parameters of the model an architecture describes: embeddings, layers with their two norms, final norm."""
    layer = attention_parameters(arch) + mlp_parameters(arch) + 2 * arch.hidden_size
    embeddings = arch.vocab_size * arch.hidden_size * (1 if arch.tie_word_embeddings else 2)
    return embeddings + arch.num_hidden_layers * layer + arch.hidden_size


class AdapterParams(Frozen):
    """What every adapter's parameter model answers about a model architecture, without torch.

    The defaults describe an adapter that changes no shape (masks, routing, sparse attention).
    """

    def misfit(self, arch: ModelArchitecture) -> str | None:
        """Why this point cannot be applied to `arch`, or None."""
        return None

    def architecture_after(self, arch: ModelArchitecture) -> ModelArchitecture:
        """The architecture the pruned model's config describes."""
        return arch

    def parameters_after(self, arch: ModelArchitecture) -> int:
        """Parameters of the pruned model (zeroed weights still count: they are stored and multiplied)."""
        return parameter_count(self.architecture_after(arch))

    def calibration_needed(self) -> Calibration | None:
        """The calibration data this point's selection scores on; None for a selection that needs none."""
        return None


def _refusal(check, *args) -> str | None:
    """The message of the ValueError `check(*args)` raises, or None."""
    try:
        check(*args)
    except ValueError as err:
        return str(err)
    return None


class DenseParams(AdapterParams):
    """The unpruned model: the baseline every speedup and quality loss is measured against."""


class LayerDropParams(AdapterParams):
    """Static depth pruning: remove whole decoder layers."""

    sparsity: float = Field(ge=0.0, le=0.9, description="fraction of decoder layers removed")
    selection: Literal["deepest", "explicit", "seeded", "block_influence"] = Field(
        "deepest",
        description=(
            "which layers: 'block_influence' = ShortGPT's criterion (per attention or MLP block for sublayer_drop, "
            "as in 'What Matters in Transformers'), in one shot: those whose output on the calibration data is most "
            "like their input (lowest 1 - mean cosine over tokens), first and last layer included; "
            "'deepest' = the contiguous block just before the last layer (where Block Influence and SLEB find "
            "Llama models most redundant), 'explicit' = `layers`, 'seeded' = a seeded random choice (the paper's "
            "simulation mode); the first and last layer are never chosen by 'deepest' or 'seeded'"
        ),
    )
    layers: list[Annotated[int, Field(ge=0, le=1023)]] | None = Field(
        None, max_length=512, description="0-based indices of the layers to remove, for selection 'explicit'"
    )
    seed: int = Field(0, ge=0, le=2**31 - 1, description="for selection 'seeded'")
    calibration: Calibration = Field(
        default_factory=Calibration, description="the text Block Influence is measured on, for 'block_influence'"
    )

    @model_validator(mode="after")
    def _layers_iff_explicit(self) -> LayerDropParams:
        if (self.layers is not None) != (self.selection == "explicit"):
            raise ValueError("'layers' is given exactly when selection is 'explicit'")
        if self.layers is not None and len(set(self.layers)) != len(self.layers):
            raise ValueError("layer indices must be unique")
        return self

    def calibration_needed(self) -> Calibration | None:
        return self.calibration if self.selection == "block_influence" else None

    def count(self, num_layers: int) -> int:
        return round(self.sparsity * num_layers)

    def removed(self, num_layers: int) -> int:
        """How many of `num_layers` layers go (raises if they cannot): all a shape depends on."""
        n = self.count(num_layers)
        if self.selection == "explicit":
            assert self.layers is not None
            if max(self.layers, default=-1) >= num_layers:
                raise ValueError(f"layer {max(self.layers)} does not exist in a {num_layers}-layer model")
            if len(self.layers) != n:
                raise ValueError(
                    f"{len(self.layers)} layers listed but sparsity {self.sparsity} of {num_layers} layers is {n}"
                )
        elif self.selection == "block_influence" and n >= num_layers:
            raise ValueError(f"cannot remove {n} of {num_layers} layers and keep one")
        elif self.selection in ("deepest", "seeded") and n > num_layers - 2:
            raise ValueError(f"cannot remove {n} of {num_layers} layers and keep the first and last")
        return n

    def layers_for(self, num_layers: int, influence: list[float] | None = None) -> list[int]:
        """The sorted indices removed from a model of `num_layers` layers; 'block_influence' ranks `influence`."""
        n = self.removed(num_layers)
        if self.selection == "explicit":
            assert self.layers is not None
            return sorted(self.layers)
        if self.selection == "deepest":
            return list(range(num_layers - 1 - n, num_layers - 1))
        if self.selection == "seeded":
            return sorted(random.Random(self.seed).sample(range(1, num_layers - 1), n))
        if influence is None or len(influence) != num_layers:
            raise ValueError(f"selection 'block_influence' needs the influence of all {num_layers} layers")
        return sorted(sorted(range(num_layers), key=influence.__getitem__)[:n])  # lowest first, ties by index

    def misfit(self, arch: ModelArchitecture) -> str | None:
        return _refusal(self.removed, arch.num_hidden_layers)

    def architecture_after(self, arch: ModelArchitecture) -> ModelArchitecture:
        dropped = self.removed(arch.num_hidden_layers)
        return arch.model_copy(update={"num_hidden_layers": arch.num_hidden_layers - dropped})


class WidthParams(AdapterParams):
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

    def misfit(self, arch: ModelArchitecture) -> str | None:
        return _refusal(self.kept_kv_groups, arch.num_key_value_heads)

    def architecture_after(self, arch: ModelArchitecture) -> ModelArchitecture:
        """Whole KV groups go, so heads per group and head_dim stay."""
        groups = self.kept_kv_groups(arch.num_key_value_heads)
        return arch.model_copy(
            update={
                "num_attention_heads": groups * arch.queries_per_kv_group,
                "num_key_value_heads": groups,
                "intermediate_size": self.kept_channels(arch.intermediate_size),
            }
        )


Projection = Literal["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]
ALL_PROJECTIONS: list[Projection] = ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]
PROJECTION_LINEARS: dict[Projection, tuple[str, ...]] = {
    "qkv_proj": ("q_proj", "k_proj", "v_proj"),
    "o_proj": ("o_proj",),
    "gate_up_proj": ("gate_proj", "up_proj"),
    "down_proj": ("down_proj",),
}
"""Each GEMM of the taxonomy as the transformers Linear attributes that compute it."""


class SublayerDropParams(LayerDropParams):
    """Static depth pruning of one sublayer kind: the attention or the MLP block of chosen layers.

    The residual path stays: a dropped sublayer adds nothing to the residual stream.
    """

    sublayer: Literal["attention", "mlp"] = Field(description="which block of the chosen layers is removed")

    def architecture_after(self, arch: ModelArchitecture) -> ModelArchitecture:
        """No config field says "layer 5 has no attention": the config keeps every layer."""
        return arch

    def parameters_after(self, arch: ModelArchitecture) -> int:
        block = attention_parameters(arch) if self.sublayer == "attention" else mlp_parameters(arch)
        return parameter_count(arch) - self.removed(arch.num_hidden_layers) * (block + arch.hidden_size)


class WeightSelection(AdapterParams):
    """Which weights go: |w| (the baseline) or a paper's criterion scored on calibration data."""

    selection: Literal["magnitude", "wanda", "sparsegpt"] = Field(
        "magnitude",
        description="'magnitude': smallest |w| (baseline); 'wanda': smallest |W_ij|·‖X_j‖₂ per output row (arXiv "
        "2306.11695); 'sparsegpt': OBS mask and weight update from H = 2·X·Xᵀ (arXiv 2301.00774); the calibrated "
        "ones layer by layer, on the outputs of the already-pruned earlier layers",
    )
    calibration: Calibration = Field(default_factory=Calibration, description="what 'wanda'/'sparsegpt' score on")

    def calibration_needed(self) -> Calibration | None:
        return None if self.selection == "magnitude" else self.calibration


class SemiStructuredParams(WeightSelection):
    """2:4 sparsity along K: in every group of four consecutive input weights, two are zero."""

    projections: list[Projection] = Field(
        default_factory=lambda: list(ALL_PROJECTIONS),
        min_length=1,
        max_length=4,
        description="which GEMMs are sparsified",
    )

    def misfit(self, arch: ModelArchitecture) -> str | None:
        """2:4 groups four consecutive weights along K, so each listed projection's K must divide by 4."""
        shapes = linear_shapes(arch)
        k = {projection: shapes[PROJECTION_LINEARS[projection][0]][0] for projection in self.projections}
        bad = [f"{p} (K={k[p]})" for p in self.projections if k[p] % 4]
        return f"2:4 needs K divisible by 4: {', '.join(bad)}" if bad else None


class LowRankParams(AdapterParams):
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

    def parameters_after(self, arch: ModelArchitecture) -> int:
        """Each factorised Linear keeps r·(K+N) weights instead of K·N (its bias moves to B)."""
        shapes = linear_shapes(arch)
        factorised = [shapes[name] for projection in self.projections for name in PROJECTION_LINEARS[projection]]
        saved = sum(k * n - self.rank(k, n) * (k + n) for k, n in factorised)
        return parameter_count(arch) - arch.num_hidden_layers * saved


class HiddenSliceParams(AdapterParams):
    """Cross-layer width: remove a share of the residual hidden dimension everywhere (SliceGPT-style)."""

    sparsity: float = Field(ge=0.0, le=0.9, description="share of hidden channels removed")
    selection: Selection = Field("magnitude", description="keep the channels of largest embedding norm, or seeded")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="used when selection is 'seeded'")

    def kept(self, hidden_size: int) -> int:
        return max(1, round((1.0 - self.sparsity) * hidden_size))

    def architecture_after(self, arch: ModelArchitecture) -> ModelArchitecture:
        """Heads keep their size: head_dim stays while the hidden size shrinks."""
        return arch.model_copy(update={"hidden_size": self.kept(arch.hidden_size)})


class TokenRoutingParams(AdapterParams):
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

    def misfit(self, arch: ModelArchitecture) -> str | None:
        return _refusal(self.capacity)

    def parameters_after(self, arch: ModelArchitecture) -> int:
        """Each routed layer adds its router: hidden->1, or hidden->r->1, without biases."""
        h, r = arch.hidden_size, self.router_rank
        router = h * r + r if r else h
        return parameter_count(arch) + len(self.routed_layers(arch.num_hidden_layers)) * router


class SparseAttentionParams(AdapterParams):
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

    def misfit(self, arch: ModelArchitecture) -> str | None:
        if self.block_size >= arch.max_position_embeddings:
            return f"block_size {self.block_size} leaves a single block in {arch.max_position_embeddings} positions: nothing to drop"
        return None

    def kept_block_count(self, query_block: int) -> int:
        causal = query_block + 1
        return min(causal, max(len(self.required_blocks(query_block)), round((1.0 - self.sparsity) * causal)))

    def kept_blocks(self, query_block: int, layer: int) -> list[int]:
        """The sorted key blocks that query block `query_block` of layer `layer` attends to."""
        required = self.required_blocks(query_block)
        others = [j for j in range(query_block + 1) if j not in required]
        random.Random(f"{self.seed}/{layer}/{query_block}").shuffle(others)
        return sorted(required | set(others[: self.kept_block_count(query_block) - len(required)]))


class UnstructuredParams(WeightSelection):
    """Single weights set to zero (in each output row, or each SparseGPT block); dense kernels run them at full cost."""

    sparsity: float = Field(ge=0.0, le=0.99, description="share of each projection's weights zeroed")
    projections: list[Projection] = Field(
        default_factory=lambda: list(ALL_PROJECTIONS), min_length=1, max_length=4, description="which GEMMs are pruned"
    )
