"""The dense baseline: the model as it is."""

from __future__ import annotations

from .base import Adapter


class Dense(Adapter):
    name = "dense"

    def apply(self, model, params):
        return model


ADAPTER = Dense()
