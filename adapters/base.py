"""The one interface every pruning family implements, built-in or from a plugin package."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, ClassVar, Generic, TypeVar

from prunereg.spec.parameters import PROJECTION_LINEARS

if TYPE_CHECKING:  # the interface itself needs no torch, so the adapter lookup stays light
    from torch import Tensor, nn
    from transformers import PreTrainedModel

    from prunereg.spec.catalog import Frozen
    from prunereg.spec.parameters import AdapterParams

PROJECTIONS = {
    projection: ("self_attn" if projection in ("qkv_proj", "o_proj") else "mlp", names)
    for projection, names in PROJECTION_LINEARS.items()
}
"""Each GEMM of the taxonomy as the Linear modules that compute it, by parent and attribute."""

ADDED_LINEARS = {"shortcut_rotation": ("attn_shortcut", "mlp_shortcut")}
"""The Linear attributes of a decoder layer that compute a GEMM the dense model lacks (taxonomy.ADDED_GEMMS)."""


def linears(model: nn.Module, projections) -> list[nn.Linear]:
    """The Linear modules of the listed GEMMs in every decoder layer."""
    found: list[nn.Linear] = []
    for layer in model.get_submodule("model.layers").children():
        for projection in projections:
            parent, names = PROJECTIONS[projection]
            found.extend(getattr(getattr(layer, parent), name) for name in names)
    return found


def _choice(params: AdapterParams) -> str:
    """How the point names what it removes: its `selection`, or for a dynamic family its `policy`."""
    for field in ("selection", "policy"):
        if hasattr(params, field):
            return f"{field} {getattr(params, field)!r}"
    return type(params).__name__


def check_calibration(params: AdapterParams, calibration: Tensor | None) -> None:
    """Refuse to run a selection that scores on calibration data without the ids it declared."""
    if calibration is None and params.calibration_needed() is not None:
        raise ValueError(
            f"{_choice(params)} scores on calibration data: pass the ids of "
            "harness.calibration.calibration_ids(params.calibration_needed(), ...) as `calibration`"
        )


def run_hooked(model: nn.Module, calibration: Tensor, handles: list, batch_size: int = 8) -> None:
    """Run the calibration ids through `model` in batches for the hooks behind `handles`, then remove them."""
    device = next(model.parameters()).device
    try:
        for batch in calibration.split(batch_size):
            model(input_ids=batch.to(device), use_cache=False)
    finally:
        for handle in handles:
            handle.remove()


P = TypeVar("P", bound="Frozen")
"""The family's parameter model (spec/parameters/, or a plugin's own)."""


class Adapter(ABC, Generic[P]):
    """Applies one family's pruning at one operating point, removing weights physically.

    `apply` receives a model it may modify in place (the caller passes a copy) and returns the
    pruned model with smaller tensors or fewer layers and a config that describes them, so the
    GEMMs that really run are the ones the method declares. A selection that scores what to remove
    on activations (the papers' criteria) gets `calibration`: token ids [sequences, length] from
    `harness.calibration.calibration_ids`, for the point's `params.calibration_needed()`; the
    model it receives is still dense, so it can run them before it prunes anything.
    """

    name: ClassVar[str]
    checkpoint_refusal: ClassVar[str | None] = None
    """Why a pruned model of this family cannot be a plain transformers checkpoint (None: it can)."""

    @abstractmethod
    def apply(self, model: PreTrainedModel, params: P, calibration: Tensor | None = None) -> PreTrainedModel: ...

    def refusal(self, model: PreTrainedModel) -> str | None:
        """Why this pruned model cannot be a plain transformers checkpoint, or None (`checkpoint_refusal` by default)."""
        return self.checkpoint_refusal

    def as_plain_model(self, model: PreTrainedModel) -> PreTrainedModel:
        """The pruned model in modules a transformers config describes (e.g. factors multiplied back)."""
        return model
