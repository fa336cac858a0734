"""Operating-point parameters of each built-in adapter, with the bounds the schema enforces.

One adapter, one parameter model, grouped by what they remove: `depth`, `width`, `weights`,
`attention`, `checkpoint`, on the shared `base`. These live in spec/ (no torch) so that validating a submission
never imports the code that applies it; adapters/ implements each name. Every model says, from a
catalog architecture alone, whether a point fits it (`misfit`) and what the pruned model's config
and parameter count are: the contract each adapter is tested against.
"""

from .attention import SparseAttentionParams
from .base import (
    ALL_PROJECTIONS,
    PROJECTION_LINEARS,
    AdapterParams,
    DenseParams,
    Projection,
    attention_parameters,
    linear_shapes,
    mlp_parameters,
    parameter_count,
)
from .checkpoint import CheckpointParams
from .depth import LayerDropParams, SublayerDropParams, TokenRoutingParams
from .weights import LowRankParams, SemiStructuredParams, UnstructuredParams, WeightSelection
from .width import HiddenSliceParams, WidthParams

__all__ = [
    "ALL_PROJECTIONS", "PROJECTION_LINEARS", "AdapterParams", "CheckpointParams", "DenseParams", "HiddenSliceParams",
    "LayerDropParams", "LowRankParams", "Projection", "SemiStructuredParams", "SparseAttentionParams", "SublayerDropParams",
    "TokenRoutingParams", "UnstructuredParams", "WeightSelection", "WidthParams", "attention_parameters",
    "linear_shapes", "mlp_parameters", "parameter_count",
]  # fmt: skip
