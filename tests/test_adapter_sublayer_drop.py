"""sublayer_drop: attention or MLP blocks removed, residual path kept, KV cache still consistent."""

from __future__ import annotations

import copy

import pytest
import torch
from tiny_models import ARCHITECTURES, IDS, logits, tiny
from transformers import DynamicCache

from prunereg.adapters import get_adapter
from prunereg.harness.checkpoint import CheckpointRefused, save_pruned
from prunereg.harness.latency import cache_argument
from prunereg.spec.parameters import SublayerDropParams

ADAPTER = get_adapter("sublayer_drop")
SUBLAYERS = ["attention", "mlp"]


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def zeroed(model, layers, sublayer):
    """The dense model with the sublayer's output projection zeroed: it then adds nothing."""
    reference = copy.deepcopy(model)
    with torch.no_grad():
        for i in layers:
            layer = reference.model.layers[i]
            out = layer.self_attn.o_proj if sublayer == "attention" else layer.mlp.down_proj
            out.weight.zero_()
            if out.bias is not None:
                out.bias.zero_()
    return reference


@pytest.mark.parametrize("model_type", ARCHITECTURES)
@pytest.mark.parametrize("sublayer", SUBLAYERS)
def test_dropped_sublayers_lose_their_weights_and_add_nothing(model_type, sublayer):
    model = tiny(model_type)
    layers = [0, 2, 4]
    params = SublayerDropParams(sparsity=0.5, selection="explicit", layers=layers, sublayer=sublayer)
    pruned = ADAPTER.apply(copy.deepcopy(model), params)
    first = model.model.layers[0]
    if sublayer == "attention":
        block, norm = first.self_attn, first.input_layernorm
    else:
        block, norm = first.mlp, first.post_attention_layernorm
    assert count(pruned) == count(model) - len(layers) * (count(block) + count(norm))
    for i, layer in enumerate(pruned.model.layers):
        assert (count(layer.self_attn if sublayer == "attention" else layer.mlp) == 0) == (i in layers)
    assert len(pruned.model.layers) == pruned.config.num_hidden_layers == 6
    torch.testing.assert_close(logits(pruned, IDS), logits(zeroed(model, layers, sublayer), IDS), rtol=1e-4, atol=1e-5)


def _decode(model, ids, cache):
    with torch.inference_mode():
        steps = [
            model(ids[:, t : t + 1], use_cache=True, **{cache_argument(model): cache}).logits
            for t in range(ids.shape[1])
        ]
    return torch.cat(steps, dim=1)


@pytest.mark.parametrize("model_type", ARCHITECTURES)
@pytest.mark.parametrize("sublayer", SUBLAYERS)
def test_a_cropped_cache_decodes_like_a_full_forward(model_type, sublayer):
    """Layer 0 dropped too: the cache's sequence length is read from slot 0, also after a crop."""
    params = SublayerDropParams(sparsity=0.5, selection="explicit", layers=[0, 3, 4], sublayer=sublayer)
    pruned = ADAPTER.apply(tiny(model_type), params)
    cache = DynamicCache(config=pruned.config)
    full = logits(pruned, IDS)
    _decode(pruned, IDS, cache)
    cache.crop(-3)  # the latency harness rolls the cache back after every decode step
    assert cache.get_seq_length() == IDS.shape[1] - 3
    torch.testing.assert_close(_decode(pruned, IDS[:, -3:], cache), full[:, -3:], rtol=1e-4, atol=1e-4)


def test_dropped_attention_keeps_a_sliding_window_cache_consistent():
    model = tiny("mistral")
    model.config.sliding_window = 5
    pruned = ADAPTER.apply(
        model, SublayerDropParams(sparsity=0.5, selection="explicit", layers=[0, 1, 5], sublayer="attention")
    )
    cache = DynamicCache(config=pruned.config)
    torch.testing.assert_close(_decode(pruned, IDS, cache), logits(pruned, IDS), rtol=1e-4, atol=1e-4)


def test_a_checkpoint_is_refused_before_anything_is_written(tmp_path):
    pruned = ADAPTER.apply(tiny("llama"), SublayerDropParams(sparsity=0.5, sublayer="mlp"))
    with pytest.raises(CheckpointRefused, match="cannot express layers without"):
        save_pruned(ADAPTER, pruned, None, tmp_path)
    assert not any(tmp_path.iterdir())
