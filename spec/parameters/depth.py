"""Depth: whole layers or sublayers removed statically (layer_drop, sublayer_drop), or per token (token_routing)."""

from __future__ import annotations

import random
from typing import Annotated, ClassVar, Literal

from pydantic import ConfigDict, Field, model_validator

from ..calibration import Calibration
from ..catalog import ModelArchitecture
from ..taxonomy import Granularity
from .base import (
    AdapterParams,
    _refusal,
    attention_parameters,
    exact_share,
    mlp_parameters,
    one_of,
    parameter_count,
)

LAYER_SELECTIONS = {
    "deepest": (
        "the contiguous block just before the last layer, round(sparsity × layers) long (where Block Influence and "
        "SLEB find Llama models most redundant); never the first or last layer"
    ),
    "explicit": (
        "exactly the layers listed in `layers`, on every model the point runs on (give them per model with the "
        "operating point's `per_model`)"
    ),
    "seeded": "round(sparsity × layers) layers drawn at random with `seed` (the paper's simulation mode), never the first or last",
    "block_influence": (
        "ShortGPT's criterion (arXiv 2403.03853), per attention or MLP block for sublayer_drop as in 'What Matters "
        "in Transformers': in one shot, the round(sparsity × layers) layers whose output on the calibration data "
        "is most like their input (lowest 1 - mean cosine over tokens), first and last layer included"
    ),
    "sleb": (
        "SLEB's search (arXiv 2402.09025): one block at a time, the one whose removal leaves the lowest calibration "
        "cross-entropy on the model pruned so far, never the first or last remaining one, round(sparsity × layers) "
        "times"
    ),
}


class LayerDropParams(AdapterParams):
    """Static depth pruning: remove whole decoder layers.

    The layers removed are a whole number: round(sparsity × layers) for a selection that chooses them,
    len(layers) for 'explicit'. The effects price that count over the model's layers, never the stated
    fraction, and an 'explicit' point that states a sparsity must state exactly len(layers) / layers of
    every model it is checked against.
    """

    model_config = ConfigDict(
        json_schema_extra={
            "if": {"properties": {"selection": {"description": "not 'explicit'", "not": {"const": "explicit"}}}},
            "then": {
                "properties": {"sparsity": {"description": "required unless selection is 'explicit'"}},
                "required": ["sparsity"],
            },
        }
    )

    granularities = frozenset({Granularity.layer})

    sparsity: float | None = Field(
        None,
        ge=0.0,
        le=0.9,
        description=(
            "fraction of decoder layers removed; round(sparsity × layers) layers go. Required unless selection is "
            "'explicit', whose fraction is len(layers) / layers of the model: omit it there, or state exactly that "
            "(a different value is refused, naming both numbers)"
        ),
    )
    selection: Literal["deepest", "explicit", "seeded", "block_influence", "sleb"] = Field(
        "deepest", description="which layers go", json_schema_extra=one_of(LAYER_SELECTIONS)
    )
    layers: list[Annotated[int, Field(ge=0, le=1023)]] | None = Field(
        None,
        max_length=512,
        description="0-based indices of the layers to remove, for selection 'explicit' (and only then); unique",
    )
    seed: int = Field(0, ge=0, le=2**31 - 1, description="for selection 'seeded'")
    calibration: Calibration = Field(
        default_factory=Calibration, description="the text 'block_influence' and 'sleb' score on"
    )

    @model_validator(mode="after")
    def _layers_iff_explicit(self) -> LayerDropParams:
        if (self.layers is not None) != (self.selection == "explicit"):
            raise ValueError("'layers' is given exactly when selection is 'explicit'")
        if self.layers is not None and len(set(self.layers)) != len(self.layers):
            raise ValueError("layer indices must be unique")
        if self.sparsity is None and self.selection != "explicit":
            raise ValueError(f"selection '{self.selection}' needs 'sparsity': the fraction of layers it removes")
        return self

    def calibration_needed(self) -> Calibration | None:
        return self.calibration if self.selection in ("block_influence", "sleb") else None

    def shape_stand_in(self) -> AdapterParams | None:
        """'deepest' removes as many layers (every layer has one shape)."""
        return self._with_selection(("block_influence", "sleb"), "deepest")

    def count(self, num_layers: int) -> int:
        if self.layers is not None:
            return len(self.layers)
        assert self.sparsity is not None
        return round(self.sparsity * num_layers)

    def removed(self, num_layers: int) -> int:
        """How many of `num_layers` layers go (raises if they cannot): all a shape depends on."""
        n = self.count(num_layers)
        if self.selection == "explicit":
            assert self.layers is not None
            if max(self.layers, default=-1) >= num_layers:
                raise ValueError(f"layer {max(self.layers)} does not exist in a {num_layers}-layer model")
            if n >= num_layers:
                raise ValueError(f"cannot remove all {num_layers} layers")
            exact_share("sparsity", self.sparsity, n, num_layers, f"layers (layers {sorted(self.layers)})")
        elif self.selection == "block_influence" and n >= num_layers:
            raise ValueError(f"cannot remove {n} of {num_layers} layers and keep one")
        elif self.selection in ("deepest", "seeded", "sleb") and n > num_layers - 2:
            raise ValueError(f"cannot remove {n} of {num_layers} layers and keep the first and last")
        return n

    def layers_for(self, num_layers: int, scores: list[float] | None = None) -> list[int]:
        """The sorted indices removed from a model of `num_layers` layers.

        The calibrated selections rank `scores`, lowest first: Block Influence itself, or for 'sleb' the
        step at which the search removed each layer (infinite for the layers it kept).
        """
        n = self.removed(num_layers)
        if self.selection == "explicit":
            assert self.layers is not None
            return sorted(self.layers)
        if self.selection == "deepest":
            return list(range(num_layers - 1 - n, num_layers - 1))
        if self.selection == "seeded":
            return sorted(random.Random(self.seed).sample(range(1, num_layers - 1), n))
        if scores is None or len(scores) != num_layers:
            raise ValueError(f"selection {self.selection!r} needs the scores of all {num_layers} layers")
        return sorted(sorted(range(num_layers), key=scores.__getitem__)[:n])  # lowest first, ties by index

    def misfit(self, arch: ModelArchitecture) -> str | None:
        return _refusal(self.removed, arch.num_hidden_layers)

    def removed_share(self, param: str, arch: ModelArchitecture) -> float:
        """'sparsity' is the layers removed over the model's layers."""
        if param != "sparsity":
            return super().removed_share(param, arch)
        return self.removed(arch.num_hidden_layers) / arch.num_hidden_layers

    def architecture_after(self, arch: ModelArchitecture) -> ModelArchitecture:
        dropped = self.removed(arch.num_hidden_layers)
        return arch.model_copy(update={"num_hidden_layers": arch.num_hidden_layers - dropped})


class SublayerDropParams(LayerDropParams):
    """Static depth pruning of one sublayer kind: the attention or the MLP block of chosen layers.

    The residual path stays: a dropped sublayer adds nothing to the residual stream.
    """

    granularities = frozenset({Granularity.sublayer})

    sublayer: Literal["attention", "mlp"] = Field(
        description="which block of the chosen layers is removed",
        json_schema_extra=one_of(
            {
                "attention": "the attention block (q/k/v/o projections and the attention core) of each chosen layer",
                "mlp": "the MLP block (gate/up and down projections) of each chosen layer",
            }
        ),
    )

    def architecture_after(self, arch: ModelArchitecture) -> ModelArchitecture:
        """No config field says "layer 5 has no attention": the config keeps every layer."""
        return arch

    def parameters_after(self, arch: ModelArchitecture) -> int:
        block = attention_parameters(arch) if self.sublayer == "attention" else mlp_parameters(arch)
        return parameter_count(arch) - self.removed(arch.num_hidden_layers) * (block + arch.hidden_size)


class TokenRoutingParams(AdapterParams):
    """Dynamic depth (Mixture-of-Depths on the MLP): per token, a routing rule decides whether a routed MLP runs.

    Routed tokens are gathered, run through the MLP on a smaller M and scattered back; the others
    keep their residual. The decision never reads later tokens, so decoding with a KV cache makes the
    same choices as a full forward: under 'seeded' it depends on the token's row and position alone,
    and every aligned window of 16 positions of one sequence sends exactly (1 - sparsity) * 16 tokens
    through each routed MLP; under 'trained' on the token's own router score against a threshold, and
    the share that passes is exact on the calibration ids only (adapters/token_routing.py says why).
    """

    window: ClassVar[int] = 16
    granularities = frozenset({Granularity.token})

    sparsity: float = Field(
        ge=0.0,
        le=0.95,
        description="share of tokens that skip each routed MLP; a whole number of tokens of a 16-position window (multiple of 1/16)",
    )
    sublayer: Literal["mlp"] = Field(
        "mlp",
        description="which sublayer is routed",
        json_schema_extra=one_of({"mlp": "the MLP block: skipped tokens run neither gate/up nor down_proj"}),
    )
    layers: Literal["all", "alternate"] = Field(
        "alternate",
        description="which layers route their MLP",
        json_schema_extra=one_of(
            {"all": "every decoder layer", "alternate": "every second layer, starting with layer 1 (MoD)"}
        ),
    )
    policy: Literal["seeded", "trained"] = Field(
        "seeded",
        description="how each token's skip is decided",
        json_schema_extra=one_of(
            {
                "seeded": (
                    "a seeded choice of the routed positions of every window (the paper's simulation mode: latency "
                    "depends on how many tokens skip, not which)"
                ),
                "trained": (
                    "Mixture-of-Depths' router, trained on the calibration ids with the base frozen (expert-choice "
                    "top-k per window, MLP output scaled by sigmoid of the score), then a token passes iff its score "
                    "exceeds the layer's threshold, the sparsity quantile of the calibration scores: causal, with a "
                    "capacity that is exact on the calibration data only"
                ),
            }
        ),
    )
    router_rank: int = Field(
        0,
        ge=0,
        le=1024,
        description="the router that runs on every token (its cost is measured): 0 = linear hidden->1, r>0 = hidden->r->1",
    )
    seed: int = Field(0, ge=0, le=2**31 - 1, description="seeds the choice of routed positions, or the router's start")
    calibration: Calibration = Field(
        default_factory=Calibration, description="the text policy 'trained' trains the routers and sets thresholds on"
    )

    def calibration_needed(self) -> Calibration | None:
        return self.calibration if self.policy == "trained" else None

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
