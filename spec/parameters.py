"""Operating-point parameters of each built-in adapter, with the bounds the schema enforces.

One adapter, one parameter model. These live in spec/ (no torch) so that validating a
submission never imports the code that applies it; adapters/ implements each name.
"""

from __future__ import annotations

import random
from typing import Annotated, Literal

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
