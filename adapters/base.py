"""The one interface every pruning family implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from prunereg.spec.catalog import Frozen


class Adapter(ABC):
    """Applies one family's pruning at one operating point, removing weights physically.

    `apply` receives a model it may modify in place (the caller passes a copy) and returns the
    pruned model with smaller tensors or fewer layers and a config that describes them, so the
    GEMMs that really run are the ones the method declares.
    """

    name: ClassVar[str]
    checkpoint_refusal: ClassVar[str | None] = None
    """Why a pruned model of this family cannot be a plain transformers checkpoint (None: it can)."""

    @abstractmethod
    def apply(self, model: PreTrainedModel, params: Frozen) -> PreTrainedModel: ...

    def as_plain_model(self, model: PreTrainedModel) -> PreTrainedModel:
        """The pruned model in modules a transformers config describes (e.g. factors multiplied back)."""
        return model
