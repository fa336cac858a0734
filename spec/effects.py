"""The GEMM-effect algebra: what a method removes from which GEMM, resolved at one operating point."""

from __future__ import annotations

from pydantic import Field

from .catalog import Frozen, ModelArchitecture
from .taxonomy import Dimension, Gemm, Granularity, Mode


class ResolvedEffect(Frozen):
    """One declared effect with its fraction evaluated at an operating point.

    `fraction` is the share of the dimension removed: 0.25 of M at granularity `layer` means the
    GEMM runs in three layers out of four; 0.5 of N at `kv_group` means half the KV groups are gone.
    """

    gemm: Gemm = Field(description="the matrix product affected")
    dimension: Dimension = Field(description="the dimension removed: M = tokens, N = outputs, K = the reduction")
    mode: Mode = Field(description="static: the same for every input; dynamic: chosen per token or input")
    granularity: Granularity = Field(description="the unit in which the dimension is removed")
    fraction: float = Field(ge=0.0, le=1.0, description="share of the dimension removed at this operating point")


def resolve(effects, params, arch: ModelArchitecture) -> list[ResolvedEffect]:
    """Evaluate each declared effect's fraction at an operating point's parameters on one model.

    A fraction given as a parameter is the share the adapter really removes from `arch`
    (AdapterParams.removed_share): three of eight layers is 0.375 whether the point says 0.375 or lists
    three layers. `params` are those the point runs with on `arch` (OperatingPoint.params_for).
    """
    resolved = []
    for e in effects:
        fraction = (
            e.fraction
            if isinstance(e.fraction, float)
            else e.fraction.scale * params.removed_share(e.fraction.param, arch)
        )
        resolved.append(
            ResolvedEffect(
                gemm=e.gemm, dimension=e.dimension, mode=e.mode, granularity=e.granularity, fraction=fraction
            )
        )
    return resolved
