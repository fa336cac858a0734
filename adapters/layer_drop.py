"""Static depth pruning (ShortGPT, SLEB, LaCo, ...): remove whole decoder layers."""

from __future__ import annotations

from torch import nn

from prunereg.spec.parameters import LayerDropParams

from .base import Adapter


class LayerDrop(Adapter[LayerDropParams]):
    name = "layer_drop"

    def apply(self, model, params: LayerDropParams, calibration=None):
        config = model.config
        dropped = set(params.layers_for(config.num_hidden_layers))
        kept = [i for i in range(config.num_hidden_layers) if i not in dropped]
        layers = model.model.layers
        model.model.layers = nn.ModuleList(layers[i] for i in kept)
        for new_index, layer in enumerate(model.model.layers):
            layer.self_attn.layer_idx = new_index  # the KV cache is indexed by position in the stack
        config.num_hidden_layers = len(kept)
        if getattr(config, "layer_types", None):
            config.layer_types = [config.layer_types[i] for i in kept]
        return model


ADAPTER = LayerDrop()
