"""Static depth pruning (ShortGPT, SLEB, LaCo, ...): remove whole decoder layers.

Selection 'block_influence' is ShortGPT's (Men et al. 2024, arXiv 2403.03853, section 3): run the dense
model on calibration text, take each layer's input X_i and output X_{i+1} on the residual stream,
BI_i = 1 - mean over tokens of cos(X_i,t, X_{i+1},t), and remove the layers of lowest BI all at once
(one shot: the scores are those of the dense model, not recomputed after each removal). The
first and last layers are ranked like the others, as in the paper.

Selection 'sleb' is SLEB's (Song et al. 2024, arXiv 2402.09025, Algorithm 1 with its metric 3, as in
their public sleb.py): blocks go one at a time; at each step every remaining block but the first and
the last (their early and latter barriers of one) is switched off in turn, the calibration text's
cross-entropy is measured on the model pruned so far, and the block whose absence costs least goes.
The search needs (L - 2) + (L - 3) + ... forward passes over the calibration set for L layers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from prunereg.spec.parameters import LayerDropParams

from .base import Adapter, check_calibration, run_hooked


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
            total[index] += F.cosine_similarity(before.pop(index), after, dim=-1).double().sum().item()

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
    run_hooked(model, calibration, handles, batch_size)
    return (1 - total / calibration.numel()).tolist()


def scores_for(model, params: LayerDropParams, calibration: torch.Tensor | None, sublayer: str | None = None):
    """What a calibrated selection ranks (None for the baselines)."""
    if calibration is None or params.selection not in ("block_influence", "sleb"):
        return None
    if params.selection == "block_influence":
        return influence(model, calibration, sublayer)
    return sleb_order(model, calibration, params.removed(model.config.num_hidden_layers), sublayer)


def _switched_off(module: nn.Module, kind: str | None):
    """A forward hook that makes `module` (a decoder layer, or its attention or MLP) leave the stream unchanged."""

    def hook(_module, args, kwargs, output):
        if kind is None:
            hidden = _hidden(args, kwargs)
            return (hidden, *output[1:]) if isinstance(output, tuple) else hidden
        if isinstance(output, tuple):  # attention: (output, weights)
            return (torch.zeros_like(output[0]), *output[1:])
        return torch.zeros_like(output)

    return module.register_forward_hook(hook, with_kwargs=True)


@torch.inference_mode()
def calibration_loss(model, calibration: torch.Tensor, batch_size: int = 8) -> float:
    """Summed next-token cross-entropy over the calibration ids (SLEB's negative log-likelihood)."""
    device, total = next(model.parameters()).device, 0.0
    for batch in calibration.split(batch_size):
        batch = batch.to(device)
        logits = model(input_ids=batch, use_cache=False).logits[:, :-1].float()
        total += F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten(), reduction="sum").item()
    return total


def sleb_order(model, calibration: torch.Tensor, count: int, sublayer: str | None = None) -> list[float]:
    """Per layer, the step at which SLEB's search removes it (or its `sublayer`), infinite if it stays."""
    layers = list(model.model.layers)
    modules = [
        layer if sublayer is None else {"attention": layer.self_attn, "mlp": layer.mlp}[sublayer] for layer in layers
    ]
    alive, order = list(range(len(layers))), [float("inf")] * len(layers)
    removed = []
    try:
        for step in range(count):
            losses = {}
            for index in alive[1:-1]:
                handle = _switched_off(modules[index], sublayer)
                try:
                    losses[index] = calibration_loss(model, calibration)
                finally:
                    handle.remove()
            chosen = min(losses, key=lambda i: (losses[i], i))
            removed.append(_switched_off(modules[chosen], sublayer))
            alive.remove(chosen)
            order[chosen] = step
    finally:
        for handle in removed:
            handle.remove()
    return order


class LayerDrop(Adapter[LayerDropParams]):
    name = "layer_drop"

    def apply(self, model, params: LayerDropParams, calibration=None):
        check_calibration(params, calibration)
        config = model.config
        dropped = set(params.layers_for(config.num_hidden_layers, scores_for(model, params, calibration)))
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
