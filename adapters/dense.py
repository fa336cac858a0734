"""The dense baseline: the model as it is."""

from __future__ import annotations

from prunereg.spec.parameters import DenseParams

from .base import Adapter


class Dense(Adapter[DenseParams]):
    name = "dense"

    def apply(self, model, params: DenseParams, calibration=None):
        return model


ADAPTER = Dense()
