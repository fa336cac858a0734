"""The adapter: rows of gate/up_proj (N) and columns of down_proj (K), the same count in every layer."""

from __future__ import annotations

import torch

from prunereg.adapters.base import Adapter
from prunereg.adapters.width import slice_linear

from . import MlpChannelsParams


class MlpChannels(Adapter[MlpChannelsParams]):
    name = "mlp_channels"

    def apply(self, model, params: MlpChannelsParams, calibration=None):
        kept = params.kept(model.config.intermediate_size)
        for layer in model.model.layers:
            mlp = layer.mlp
            norms = sum(w.detach().float().pow(2).sum(1) for w in (mlp.gate_proj.weight, mlp.up_proj.weight))
            norms = norms + mlp.down_proj.weight.detach().float().pow(2).sum(0)
            rows = torch.argsort(norms, descending=True, stable=True)[:kept].sort().values
            mlp.gate_proj = slice_linear(mlp.gate_proj, rows=rows)
            mlp.up_proj = slice_linear(mlp.up_proj, rows=rows)
            mlp.down_proj = slice_linear(mlp.down_proj, cols=rows)
        model.config.intermediate_size = kept
        return model


ADAPTER = MlpChannels()
