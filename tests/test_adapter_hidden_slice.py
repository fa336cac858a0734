"""hidden_slice: the residual hidden dimension sliced everywhere, consistently across layers."""

from __future__ import annotations

import copy

import pytest
import torch
from tiny_models import ARCHITECTURES, IDS, logits, tiny
from transformers import AutoModelForCausalLM

from prunereg.adapters import get_adapter
from prunereg.adapters.hidden_slice import kept_channels
from prunereg.harness.checkpoint import save_pruned
from prunereg.spec.parameters import HiddenSliceParams

ADAPTER = get_adapter("hidden_slice")


def count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def tied(model_type: str):
    model = tiny(model_type)
    model.lm_head.weight = model.model.embed_tokens.weight
    model.config.tie_word_embeddings = True
    return model


class KeptRMSNorm(torch.nn.Module):
    """RMSNorm whose statistics see only the kept channels (what the sliced model computes)."""

    def __init__(self, norm, kept: torch.Tensor):
        super().__init__()
        self.weight, self.eps, self.kept = norm.weight.detach() * kept, norm.variance_epsilon, kept

    def forward(self, x):
        variance = x.pow(2)[..., self.kept].mean(-1, keepdim=True)
        return x * torch.rsqrt(variance + self.eps) * self.weight


def masked(model, kept: torch.Tensor):
    """The dense model with the removed channels zero in the residual stream, at full width."""
    reference = copy.deepcopy(model)
    with torch.no_grad():
        reference.model.embed_tokens.weight[:, ~kept] = 0
        for layer in reference.model.layers:
            for out in (layer.self_attn.o_proj, layer.mlp.down_proj):
                out.weight[~kept] = 0
            layer.input_layernorm = KeptRMSNorm(layer.input_layernorm, kept)
            layer.post_attention_layernorm = KeptRMSNorm(layer.post_attention_layernorm, kept)
        reference.model.norm = KeptRMSNorm(reference.model.norm, kept)
    return reference


@pytest.mark.parametrize("model_type", ARCHITECTURES)
@pytest.mark.parametrize("tie", [False, True])
def test_shapes_config_and_parameter_counts(model_type, tie):
    model = tied(model_type) if tie else tiny(model_type)
    pruned = ADAPTER.apply(copy.deepcopy(model), HiddenSliceParams(sparsity=0.25))
    config, attn, mlp = pruned.config, pruned.model.layers[0].self_attn, pruned.model.layers[0].mlp
    assert (config.hidden_size, config.head_dim, config.num_attention_heads, config.intermediate_size) == (48, 8, 8, 96)
    assert pruned.model.embed_tokens.weight.shape == (97, 48) and pruned.lm_head.weight.shape == (97, 48)
    assert (pruned.lm_head.weight is pruned.model.embed_tokens.weight) == tie
    assert [p.in_features for p in (attn.q_proj, attn.k_proj, attn.v_proj, mlp.gate_proj, mlp.up_proj)] == [48] * 5
    assert (attn.q_proj.out_features, attn.k_proj.out_features, attn.o_proj.in_features) == (64, 32, 64)
    assert (attn.o_proj.out_features, mlp.down_proj.out_features, pruned.model.norm.weight.numel()) == (48, 48, 48)
    per_layer = 16 * (64 + 32 + 32 + 96 + 96) + 16 * (64 + 96) + 2 * 16
    removed = 97 * 16 * (1 if tie else 2) + 6 * per_layer + 16
    assert count(pruned) == count(model) - removed


@pytest.mark.parametrize("model_type", ARCHITECTURES)
@pytest.mark.parametrize("selection", ["magnitude", "seeded"])
def test_sliced_equals_dense_with_the_channels_zeroed(model_type, selection):
    """Proves every slice (embedding, norms, K of q/k/v/gate/up, N of o/down, lm_head) lines up."""
    model = tiny(model_type)
    params = HiddenSliceParams(sparsity=0.25, selection=selection, seed=3)
    kept = torch.zeros(64, dtype=torch.bool)
    kept[kept_channels(model.model.embed_tokens.weight, params)] = True
    pruned = ADAPTER.apply(copy.deepcopy(model), params)
    torch.testing.assert_close(logits(pruned, IDS), logits(masked(model, kept), IDS), rtol=1e-4, atol=1e-5)


def test_magnitude_keeps_the_embedding_columns_of_largest_norm():
    embedding = torch.randn(97, 64)
    kept = kept_channels(embedding, HiddenSliceParams(sparsity=0.25))
    norms = embedding.norm(dim=0)
    dropped = torch.ones(64, dtype=torch.bool)
    dropped[kept] = False
    assert len(kept) == 48 and norms[kept].min() > norms[dropped].max()


@pytest.mark.parametrize("tie", [False, True])
def test_the_config_describes_the_sliced_model(tmp_path, tie):
    """An ordinary checkpoint: plain transformers reloads it."""
    pruned = ADAPTER.apply(tied("qwen2") if tie else tiny("qwen2"), HiddenSliceParams(sparsity=0.25))
    save_pruned(ADAPTER, pruned, None, tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    torch.testing.assert_close(logits(reloaded, IDS), logits(pruned, IDS))
