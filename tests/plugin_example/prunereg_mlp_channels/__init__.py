"""The row this package adds to prunereg's adapter table, and its parameter model. No torch here:
prunereg reads this module to validate and list submissions; the adapter itself is in .adapter."""

from __future__ import annotations

from pydantic import Field

from prunereg.spec.adapters import AdapterRow
from prunereg.spec.catalog import ModelArchitecture
from prunereg.spec.parameters import AdapterParams
from prunereg.spec.taxonomy import Family


class MlpChannelsParams(AdapterParams):
    """Static width of the MLP alone: the intermediate channels of smallest weight norm go in every layer."""

    sparsity: float = Field(ge=0.0, le=0.9, description="share of MLP intermediate channels removed")

    def kept(self, intermediate_size: int) -> int:
        return max(1, round((1.0 - self.sparsity) * intermediate_size))

    def architecture_after(self, arch: ModelArchitecture) -> ModelArchitecture:
        return arch.model_copy(update={"intermediate_size": self.kept(arch.intermediate_size)})


ROW = AdapterRow(
    name="mlp_channels",
    params=MlpChannelsParams,
    families=frozenset({Family.static_width}),
    module="prunereg_mlp_channels.adapter",
    examples=(MlpChannelsParams(sparsity=0.5),),
    unpruned=MlpChannelsParams(sparsity=0.0),
)
