"""Width: heads and MLP channels of every layer (width), or the hidden dimension itself (hidden_slice)."""

from __future__ import annotations

from pydantic import Field

from ..catalog import ModelArchitecture
from .base import AdapterParams, Selection, _refusal


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
