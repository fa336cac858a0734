"""Width: heads and MLP channels of every layer (width), or the hidden dimension itself (hidden_slice)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..calibration import Calibration
from ..catalog import ModelArchitecture
from .base import AdapterParams, _refusal


class WidthParams(AdapterParams):
    """Static width pruning: attention heads in whole KV groups, and MLP channels."""

    attention_sparsity: float = Field(
        ge=0.0, le=0.9375, description="fraction of KV groups (and so of query heads) removed in every layer"
    )
    mlp_sparsity: float = Field(ge=0.0, le=0.95, description="fraction of MLP intermediate channels removed")
    selection: Literal["magnitude", "seeded", "taylor", "flap"] = Field(
        "magnitude",
        description=(
            "which groups/channels stay, the same count in every layer, all scored on the dense model: "
            "'taylor' = LLM-Pruner's first-order element-wise importance (arXiv 2305.11627), Σ|W ⊙ ∂L/∂W| over "
            "every weight of the coupled group (a KV group: its k/v rows, its query heads' q rows and o_proj "
            "columns; a channel: its gate and up rows and down_proj column), L the LM loss on the calibration data; "
            "'flap' = FLAP's fluctuation metric (arXiv 2312.11983), per o_proj/down_proj input channel the sample "
            "variance of that input over the calibration tokens times ‖W[:, j]‖², summed over a KV group's "
            "channels, without FLAP's bias compensation and adaptive per-layer structure; 'magnitude' = largest "
            "weight norm (baseline), 'seeded' = a seeded random choice"
        ),
    )
    seed: int = Field(0, ge=0, le=2**31 - 1, description="used when selection is 'seeded'")
    calibration: Calibration = Field(default_factory=Calibration, description="the text 'taylor' and 'flap' score on")

    def calibration_needed(self) -> Calibration | None:
        return self.calibration if self.selection in ("taylor", "flap") else None

    def shape_stand_in(self) -> AdapterParams | None:
        """'magnitude' keeps as many KV groups and channels in every layer."""
        return self._with_selection(("taylor", "flap"), "magnitude")

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


HiddenSliceSelection = Literal["magnitude", "seeded", "pca", "slicegpt"]


class HiddenSliceParams(AdapterParams):
    """Cross-layer width: remove a share of the residual hidden dimension everywhere (SliceGPT-style)."""

    sparsity: float = Field(ge=0.0, le=0.9, description="share of hidden channels removed")
    selection: HiddenSliceSelection = Field(
        "magnitude",
        description=(
            "'magnitude': keep the channels of largest embedding-column norm (baseline); 'seeded': a seeded random "
            "choice; 'slicegpt': SliceGPT (arXiv 2401.15024): fold the RMSNorm weights into the Linears that read "
            "them and, block by block on the calibration data, rotate the residual stream into the principal "
            "directions of that block's input and keep the leading ones; the rotation changes between blocks, so "
            "each residual connection runs a kept x kept shortcut GEMM (declare shortcut_rotation); 'pca': the same "
            "with one rotation for the whole stream (PCA of every block's input pooled), so no shortcut GEMMs"
        ),
    )
    seed: int = Field(0, ge=0, le=2**31 - 1, description="used when selection is 'seeded'")
    calibration: Calibration = Field(
        default_factory=Calibration,
        description="the text the principal directions are computed on, for 'pca' and 'slicegpt'",
    )

    def calibration_needed(self) -> Calibration | None:
        return self.calibration if self.selection in ("pca", "slicegpt") else None

    def shape_stand_in(self) -> AdapterParams | None:
        """'magnitude' slices to the same width; 'slicegpt' has none (its shortcut GEMMs)."""
        return self._with_selection(("pca",), "magnitude")

    def kept(self, hidden_size: int) -> int:
        return max(1, round((1.0 - self.sparsity) * hidden_size))

    def architecture_after(self, arch: ModelArchitecture) -> ModelArchitecture:
        """Heads keep their size: head_dim stays while the hidden size shrinks. SliceGPT's per-block rotations
        leave the embedding and lm_head in different bases, so they are untied."""
        untied = {"tie_word_embeddings": False} if self.selection == "slicegpt" else {}
        return arch.model_copy(update={"hidden_size": self.kept(arch.hidden_size), **untied})

    def parameters_after(self, arch: ModelArchitecture) -> int:
        """Plus SliceGPT's two kept x kept shortcut matrices per layer."""
        kept = self.kept(arch.hidden_size)
        shortcuts = 2 * arch.num_hidden_layers * kept * kept if self.selection == "slicegpt" else 0
        return super().parameters_after(arch) + shortcuts
