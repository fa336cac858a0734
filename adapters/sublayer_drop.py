"""Static depth pruning of sublayers ("What Matters in Transformers?", FFN-skip): remove the
attention or the MLP block of chosen layers for every token, keeping the residual path.

The dropped block and the RMSNorm in front of it are replaced by a module without parameters
that adds nothing to the residual stream, so the weights are gone and no GEMM of that block runs.
A dropped attention still writes a one-channel placeholder to its KV-cache slot: the cache's
bookkeeping (sequence length read from slot 0, mask sizes, cropping) then stays right whichever
layers are dropped, at b·s elements per layer instead of b·s·kv_heads·head_dim.

A transformers config cannot say "layer 5 has no attention", so a pruned model cannot be saved
as a plain checkpoint (`checkpoint_refusal`); it is rebuilt from the dense model and the point.

Selection 'block_influence' is the criterion of "What Matters in Transformers? Not All Attention is
Needed" (He et al. 2024, arXiv 2406.15786): on calibration text, the cosine similarity between a
block's input X on the residual stream and X + block(norm(X)), averaged over tokens; the blocks of
the chosen kind that change the stream least (1 - similarity lowest) go, all at once from the dense
model's scores (the paper's one-shot dropping). Selection 'sleb' runs SLEB's search (layer_drop.py)
over blocks of the chosen kind: one at a time, the one whose absence costs the calibration text least.
"""

from __future__ import annotations

from torch import nn

from prunereg.spec.parameters import SublayerDropParams

from .base import Adapter, check_calibration
from .layer_drop import scores_for


class DroppedMLP(nn.Module):
    """A removed MLP block: its output is zero, so the residual add leaves the stream unchanged."""

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states.new_zeros(()).expand_as(hidden_states)


class DroppedAttention(nn.Module):
    """A removed attention block, with the (output, weights) return of transformers' attention."""

    def __init__(self, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx

    def forward(self, hidden_states, *args, **kwargs):
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        if cache is not None:
            placeholder = hidden_states.new_empty((hidden_states.shape[0], 1, hidden_states.shape[1], 1))
            cache.update(placeholder, placeholder, self.layer_idx)
        return hidden_states.new_zeros(()).expand_as(hidden_states), None


class SublayerDrop(Adapter[SublayerDropParams]):
    name = "sublayer_drop"
    checkpoint_refusal = "a transformers config cannot express layers without their attention or MLP block"

    def apply(self, model, params: SublayerDropParams, calibration=None):
        check_calibration(params, calibration)
        scores = scores_for(model, params, calibration, params.sublayer)
        for index in params.layers_for(model.config.num_hidden_layers, scores):
            layer = model.model.layers[index]
            if params.sublayer == "attention":
                layer.self_attn = DroppedAttention(layer.self_attn.layer_idx)
                layer.input_layernorm = nn.Identity()
            else:
                layer.mlp = DroppedMLP()
                layer.post_attention_layernorm = nn.Identity()
        return model


ADAPTER = SublayerDrop()
