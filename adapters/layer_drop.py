"""Static depth pruning (ShortGPT, SLEB, LaCo, ...): remove whole decoder layers.

Selection 'block_influence' is ShortGPT's (Men et al. 2024, arXiv 2403.03853, section 3): run the dense
model on calibration text, take each layer's input X_i and output X_{i+1} on the residual stream,
BI_i = 1 - mean over tokens of cos(X_i,t, X_{i+1},t), and remove the layers of lowest BI all at once
(one shot: the scores are those of the dense model, not recomputed after each removal). The
first and last layers are ranked like the others, as in the paper.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from prunereg.spec.parameters import LayerDropParams

from .base import Adapter, check_calibration


def _hidden(args, kwargs) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _output(output) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


@torch.inference_mode()
def influence(model, calibration: torch.Tensor, sublayer: str | None = None, batch_size: int = 8) -> list[float]:
    """1 - mean cosine over calibration tokens between the residual stream before and after each decoder
    layer (`sublayer` None: Block Influence), or before and after its "attention" or "mlp" block, i.e.
    X against X + block(norm(X)) ("What Matters in Transformers", arXiv 2406.15786). One per layer.
    """
    layers = list(model.model.layers)
    total = torch.zeros(len(layers), dtype=torch.float64)
    before: dict[int, torch.Tensor] = {}

    def record(index: int):
        def pre_hook(module, args, kwargs):
            before[index] = _hidden(args, kwargs).float()

        def hook(module, args, kwargs, output):
            after = _output(output).float()
            if sublayer is not None:
                after = before[index] + after  # the block's output is added to the stream it read
            total[index] += F.cosine_similarity(before.pop(index), after, dim=-1).double().sum()

        return pre_hook, hook

    handles = []
    for index, layer in enumerate(layers):
        reads, writes = {
            None: (layer, layer),
            "attention": (layer.input_layernorm, layer.self_attn),
            "mlp": (layer.post_attention_layernorm, layer.mlp),
        }[sublayer]
        pre_hook, hook = record(index)
        handles.append(reads.register_forward_pre_hook(pre_hook, with_kwargs=True))
        handles.append(writes.register_forward_hook(hook, with_kwargs=True))
    device = next(model.parameters()).device
    try:
        for batch in calibration.split(batch_size):
            model(input_ids=batch.to(device), use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return (1 - total / calibration.numel()).tolist()


class LayerDrop(Adapter[LayerDropParams]):
    name = "layer_drop"

    def apply(self, model, params: LayerDropParams, calibration=None):
        check_calibration(params, calibration)
        config = model.config
        scores = (
            influence(model, calibration) if calibration is not None and params.selection == "block_influence" else None
        )
        dropped = set(params.layers_for(config.num_hidden_layers, scores))
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
