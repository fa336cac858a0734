"""Width: heads and MLP channels of every layer (width), or the hidden dimension itself (hidden_slice)."""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field, model_validator

from ..calibration import Calibration
from ..catalog import Frozen, ModelArchitecture
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

WIDTH_SELECTIONS = {
    "magnitude": (
        "baseline: in each layer, the KV groups and channels whose coupled rows and columns (a group's q/k/v rows "
        "and o_proj columns; a channel's gate and up rows and down_proj column) have the largest sum of squared weights"
    ),
    "seeded": "baseline: in each layer, a seeded random choice of the KV groups and channels kept",
    "taylor": (
        "LLM-Pruner's first-order element-wise importance (arXiv 2305.11627): Σ|W ⊙ ∂L/∂W| over every weight of "
        "the coupled group (a KV group: its k/v rows, its query heads' q rows and o_proj columns; a channel: its "
        "gate and up rows and down_proj column), L the LM loss on the calibration data; the largest stay"
    ),
    "flap": (
        "FLAP's fluctuation metric (arXiv 2312.11983): per o_proj/down_proj input channel the sample variance of "
        "that input over the calibration tokens times ‖W[:, j]‖², summed over a KV group's channels; the largest "
        "stay. FLAP's bias compensation is left out; its adaptive per-layer structure is given as `per_layer`"
    ),
}


class LayerWidth(Frozen):
    """What one decoder layer keeps: whole KV groups (each with its query heads) and MLP channels."""

    kv_groups: int = Field(ge=1, le=1024, description="KV groups this layer keeps, each with its query heads")
    channels: int = Field(ge=1, le=1_048_576, description="MLP intermediate channels this layer keeps")


class WidthParams(AdapterParams):
    """Static width pruning: attention heads in whole KV groups, and MLP channels.

    Either one share for every layer (`attention_sparsity`, `mlp_sparsity`, rounded to whole groups and
    channels), or `per_layer`: the kept counts of each layer, for FLAP/OWL-style non-uniform allocations. The
    effects price the groups and channels really removed, over all layers; with `per_layer` the two
    fractions may be omitted (they are derived per model) or stated exactly as the removed share.
    """

    granularities = frozenset({Granularity.kv_group, Granularity.channel})
    model_config = ConfigDict(
        json_schema_extra={
            "anyOf": [
                {"properties": {"per_layer": {"description": "the per-layer counts"}}, "required": ["per_layer"]},
                {
                    "properties": {
                        "attention_sparsity": {"description": "the uniform fraction of KV groups"},
                        "mlp_sparsity": {"description": "the uniform fraction of MLP channels"},
                    },
                    "required": ["attention_sparsity", "mlp_sparsity"],
                },
            ]
        }
    )

    attention_sparsity: float | None = Field(
        None,
        ge=0.0,
        le=0.9375,
        description=(
            "fraction of KV groups (and so of query heads) removed in every layer: a whole number of groups. "
            "With `per_layer`, omit it (it is then the groups removed over all layers' groups) or state exactly that"
        ),
    )
    mlp_sparsity: float | None = Field(
        None,
        ge=0.0,
        le=0.95,
        description=(
            "fraction of MLP intermediate channels removed in every layer, rounded to whole channels. With "
            "`per_layer`, omit it (it is then the channels removed over all layers' channels) or state exactly that"
        ),
    )
    per_layer: list[LayerWidth] | None = Field(
        None,
        min_length=1,
        max_length=1024,
        description=(
            "the KV groups and channels each decoder layer keeps, first layer first, one entry per layer of the "
            "model (give a model's own list in the operating point's `per_model`); replaces the uniform fractions"
        ),
    )
    selection: Literal["magnitude", "seeded", "taylor", "flap"] = Field(
        "magnitude",
        description="which KV groups and channels of each layer stay, all scored on the dense model",
        json_schema_extra=one_of(WIDTH_SELECTIONS),
    )
    seed: int = Field(0, ge=0, le=2**31 - 1, description="used when selection is 'seeded'")
    calibration: Calibration = Field(default_factory=Calibration, description="the text 'taylor' and 'flap' score on")

    @model_validator(mode="after")
    def _uniform_or_per_layer(self) -> WidthParams:
        if self.per_layer is None and (self.attention_sparsity is None or self.mlp_sparsity is None):
            raise ValueError("give attention_sparsity and mlp_sparsity, or per_layer")
        return self

    def calibration_needed(self) -> Calibration | None:
        return self.calibration if self.selection in ("taylor", "flap") else None

    def shape_stand_in(self) -> AdapterParams | None:
        """'magnitude' keeps as many KV groups and channels in every layer."""
        return self._with_selection(("taylor", "flap"), "magnitude")

    def kept_kv_groups(self, num_kv_heads: int) -> int:
        """KV groups kept in every layer; heads go in whole groups so grouped-query attention stays well formed."""
        assert self.attention_sparsity is not None
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
        assert self.mlp_sparsity is not None
        return max(1, round((1.0 - self.mlp_sparsity) * intermediate_size))

    def kept(self, arch: ModelArchitecture) -> list[LayerWidth]:
        """(KV groups, channels) each layer of `arch` keeps (raises where the point cannot apply to it)."""
        return self.kept_per_layer(arch.num_hidden_layers, arch.num_key_value_heads, arch.intermediate_size)

    def kept_per_layer(self, layers: int, num_kv: int, intermediate: int) -> list[LayerWidth]:
        if self.per_layer is None:
            uniform = LayerWidth(kv_groups=self.kept_kv_groups(num_kv), channels=self.kept_channels(intermediate))
            return [uniform] * layers
        if len(self.per_layer) != layers:
            raise ValueError(f"per_layer gives {len(self.per_layer)} layers, the model has {layers}")
        for i, layer in enumerate(self.per_layer):
            if layer.kv_groups > num_kv or layer.channels > intermediate:
                raise ValueError(
                    f"per_layer[{i}] keeps {layer.kv_groups} KV groups and {layer.channels} channels, "
                    f"the model has {num_kv} and {intermediate}"
                )
        self._shares(layers, num_kv, intermediate)
        return list(self.per_layer)

    def _shares(self, layers: int, num_kv: int, intermediate: int) -> dict[str, float]:
        """The removed share of groups and channels over all layers; a stated fraction must be exactly that."""
        assert self.per_layer is not None
        groups = sum(num_kv - layer.kv_groups for layer in self.per_layer)
        channels = sum(intermediate - layer.channels for layer in self.per_layer)
        return {
            "attention_sparsity": exact_share(
                "attention_sparsity", self.attention_sparsity, groups, layers * num_kv, "KV groups of per_layer"
            ),
            "mlp_sparsity": exact_share(
                "mlp_sparsity", self.mlp_sparsity, channels, layers * intermediate, "MLP channels of per_layer"
            ),
        }

    def misfit(self, arch: ModelArchitecture) -> str | None:
        return _refusal(self.kept, arch)

    def removed_share(self, param: str, arch: ModelArchitecture) -> float:
        """Groups (or channels) removed over all layers' groups (channels): what the pruned model runs."""
        if param not in ("attention_sparsity", "mlp_sparsity"):
            return super().removed_share(param, arch)
        if self.per_layer is not None:
            self.kept(arch)
            return self._shares(arch.num_hidden_layers, arch.num_key_value_heads, arch.intermediate_size)[param]
        if param == "attention_sparsity":
            return 1 - self.kept_kv_groups(arch.num_key_value_heads) / arch.num_key_value_heads
        return 1 - self.kept_channels(arch.intermediate_size) / arch.intermediate_size

    def _layer_architecture(self, arch: ModelArchitecture, layer: LayerWidth) -> ModelArchitecture:
        return arch.model_copy(
            update={
                "num_attention_heads": layer.kv_groups * arch.queries_per_kv_group,
                "num_key_value_heads": layer.kv_groups,
                "intermediate_size": layer.channels,
            }
        )

    def architecture_after(self, arch: ModelArchitecture) -> ModelArchitecture:
        """Whole KV groups go, so heads per group and head_dim stay. Layers of different widths have no one
        architecture (no config field holds a per-layer width): that raises."""
        kept = set(self.kept(arch))
        if len(kept) > 1:
            raise ValueError("layers keep different widths, which no single architecture describes")
        return self._layer_architecture(arch, kept.pop())

    def parameters_after(self, arch: ModelArchitecture) -> int:
        """Each layer's attention and MLP at its own width; embeddings and norms unchanged."""

        def blocks(a: ModelArchitecture) -> int:
            return attention_parameters(a) + mlp_parameters(a)

        change = sum(blocks(self._layer_architecture(arch, layer)) - blocks(arch) for layer in self.kept(arch))
        return parameter_count(arch) + change


HiddenSliceSelection = Literal["magnitude", "seeded", "pca", "slicegpt"]


class HiddenSliceParams(AdapterParams):
    """Cross-layer width: remove a share of the residual hidden dimension everywhere (SliceGPT-style)."""

    granularities = frozenset({Granularity.hidden})

    sparsity: float = Field(
        ge=0.0, le=0.9, description="share of hidden channels removed, rounded to whole channels (priced as rounded)"
    )
    selection: HiddenSliceSelection = Field(
        "magnitude",
        description="which hidden channels (or principal directions) stay",
        json_schema_extra=one_of(
            {
                "magnitude": "baseline: keep the hidden channels of largest embedding-column norm",
                "seeded": "baseline: a seeded random choice of the hidden channels kept",
                "slicegpt": (
                    "SliceGPT (arXiv 2401.15024): fold the RMSNorm weights into the Linears that read them and, block "
                    "by block on the calibration data, rotate the residual stream into the principal directions of "
                    "that block's input and keep the leading ones; the rotation changes between blocks, so each "
                    "residual connection runs a kept x kept shortcut GEMM (declare shortcut_rotation)"
                ),
                "pca": (
                    "SliceGPT with one rotation for the whole stream (PCA of every block's input pooled), so no "
                    "shortcut GEMMs"
                ),
            }
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
        """The hidden size left. From 512 channels on it is SliceGPT's own rounding: (1 − sparsity)·hidden
        truncated, then down to a multiple of 8 (its `--round-interval`, default 8, experiments/run_slicegpt.py):
        bf16 tensor cores want 16-byte aligned dimensions, and a Llama-2-7B hidden size of 3277 (20 %) ran
        prefill at 0.22x of dense on an H100 (results/h100-headline/log-llama-2-7b-3.txt)."""
        if hidden_size < 512:
            return max(1, round((1.0 - self.sparsity) * hidden_size))
        kept = int((1.0 - self.sparsity) * hidden_size)
        return max(8, kept - kept % 8)

    def removed_share(self, param: str, arch: ModelArchitecture) -> float:
        """'sparsity' is the hidden channels removed over the hidden size."""
        if param != "sparsity":
            return super().removed_share(param, arch)
        return 1 - self.kept(arch.hidden_size) / arch.hidden_size

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
