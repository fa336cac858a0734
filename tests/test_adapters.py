"""Adapters on tiny random Llama, Qwen2 and Mistral models: shapes, counts, equivalences."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, DynamicCache

from prunereg.adapters import ADAPTER_MODULES, get_adapter
from prunereg.harness.latency import cache_argument
from prunereg.spec.parameters import DenseParams, LayerDropParams, WidthParams
from prunereg.spec.submission import ADAPTER_FAMILIES

ARCHITECTURES = ["llama", "qwen2", "mistral"]


def tiny(model_type: str) -> torch.nn.Module:
    config = AutoConfig.for_model(
        model_type,
        vocab_size=97,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=6,
        num_attention_heads=8,
        num_key_value_heads=4,
        head_dim=8,
        max_position_embeddings=128,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    if model_type == "qwen2":  # random biases, so slicing them is tested
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                torch.nn.init.normal_(proj.bias, std=0.1)
    return model


def logits(model, ids):
    with torch.inference_mode():
        return model(ids, use_cache=False).logits


IDS = torch.randint(97, (2, 12), generator=torch.Generator().manual_seed(1))


def test_every_registered_adapter_is_a_schema_value():
    assert set(ADAPTER_MODULES) == set(ADAPTER_FAMILIES)
    for name in ADAPTER_MODULES:
        assert get_adapter(name).name == name


def test_unknown_adapter_suggests_a_name():
    with pytest.raises(KeyError, match="did you mean 'layer_drop'"):
        get_adapter("layer_dorp")


@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_zero_pruning_equals_dense(model_type):
    model = tiny(model_type)
    reference = logits(model, IDS)
    for name, params in [
        ("dense", DenseParams()),
        ("layer_drop", LayerDropParams(sparsity=0.0)),
        ("width", WidthParams(attention_sparsity=0.0, mlp_sparsity=0.0)),
    ]:
        pruned = get_adapter(name).apply(copy.deepcopy(model), params)
        torch.testing.assert_close(logits(pruned, IDS), reference)


@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_layer_drop_removes_layers_and_matches_skipping_them(model_type):
    model = tiny(model_type)
    params = LayerDropParams(sparsity=0.5, selection="explicit", layers=[1, 3, 4])
    pruned = get_adapter("layer_drop").apply(copy.deepcopy(model), params)
    assert len(pruned.model.layers) == 3 and pruned.config.num_hidden_layers == 3
    per_layer = sum(p.numel() for p in model.model.layers[0].parameters())
    assert sum(p.numel() for p in pruned.parameters()) == sum(p.numel() for p in model.parameters()) - 3 * per_layer

    skipped = copy.deepcopy(model)
    for i in (1, 3, 4):  # identity sublayers: the residual stream passes through unchanged
        skipped.model.layers[i].forward = lambda hidden_states, *a, **k: hidden_states
    torch.testing.assert_close(logits(pruned, IDS), logits(skipped, IDS))


@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_width_slices_whole_kv_groups_and_channels(model_type):
    model = tiny(model_type)
    params = WidthParams(attention_sparsity=0.5, mlp_sparsity=0.25)
    pruned = get_adapter("width").apply(copy.deepcopy(model), params)
    attn, mlp = pruned.model.layers[0].self_attn, pruned.model.layers[0].mlp
    assert (attn.q_proj.out_features, attn.k_proj.out_features, attn.v_proj.out_features) == (32, 16, 16)
    assert attn.o_proj.in_features == 32
    assert (mlp.gate_proj.out_features, mlp.up_proj.out_features, mlp.down_proj.in_features) == (72, 72, 72)
    config = pruned.config
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim, config.intermediate_size) == (
        4,
        2,
        8,
        72,
    )
    removed_per_layer = 64 * (32 + 16 + 16) + 32 * 64 + 3 * 64 * 24
    if model_type == "qwen2":
        removed_per_layer += 32 + 16 + 16
    dense_count = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for p in pruned.parameters()) == dense_count - 6 * removed_per_layer


@pytest.mark.parametrize("model_type", ARCHITECTURES)
@pytest.mark.parametrize("selection", ["magnitude", "seeded"])
def test_width_equals_dense_with_the_removed_units_zeroed(model_type, selection):
    """Physically sliced = masked: proves the slices of q/k/v/o and gate/up/down line up."""
    model = tiny(model_type)
    pruned = get_adapter("width").apply(
        copy.deepcopy(model), WidthParams(attention_sparsity=0.25, mlp_sparsity=0.5, selection=selection)
    )
    masked = copy.deepcopy(model)
    for dense_layer, small in zip(masked.model.layers, pruned.model.layers):
        attn = dense_layer.self_attn
        kept_q = _kept_rows(attn.q_proj.weight, small.self_attn.q_proj.weight)
        kept_kv = _kept_rows(attn.k_proj.weight, small.self_attn.k_proj.weight)
        with torch.no_grad():
            for proj, kept in ((attn.q_proj, kept_q), (attn.k_proj, kept_kv), (attn.v_proj, kept_kv)):
                proj.weight[~kept] = 0
                if proj.bias is not None:
                    proj.bias[~kept] = 0
            attn.o_proj.weight[:, ~kept_q] = 0
            mlp = dense_layer.mlp
            kept_c = _kept_rows(mlp.gate_proj.weight, small.mlp.gate_proj.weight)
            mlp.gate_proj.weight[~kept_c] = 0
            mlp.up_proj.weight[~kept_c] = 0
            mlp.down_proj.weight[:, ~kept_c] = 0
    torch.testing.assert_close(logits(pruned, IDS), logits(masked, IDS), rtol=1e-4, atol=1e-5)


def _kept_rows(dense_weight, small_weight) -> torch.Tensor:
    """Which rows of the dense weight survive in the sliced one (rows are unique random vectors)."""
    matches = (dense_weight[:, None, :] == small_weight[None, :, :]).all(-1)
    assert matches.sum() == small_weight.shape[0]
    return matches.any(1)


@pytest.mark.parametrize("model_type", ARCHITECTURES)
@pytest.mark.parametrize(
    "name,params",
    [("layer_drop", LayerDropParams(sparsity=0.5)), ("width", WidthParams(attention_sparsity=0.5, mlp_sparsity=0.5))],
)
def test_decoding_with_the_kv_cache_matches_a_full_forward(model_type, name, params):
    """Token by token with the cache = one forward: the cache sees the pruned layers and heads."""
    pruned = get_adapter(name).apply(tiny(model_type), params)
    cache = DynamicCache(config=pruned.config)
    steps = []
    with torch.inference_mode():
        for t in range(IDS.shape[1]):
            out = pruned(IDS[:, t : t + 1], use_cache=True, **{cache_argument(pruned): cache})
            steps.append(out.logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), logits(pruned, IDS), rtol=1e-4, atol=1e-4)


def test_width_refuses_heads_outside_whole_kv_groups():
    with pytest.raises(ValueError, match="not a whole number of groups"):
        get_adapter("width").apply(tiny("llama"), WidthParams(attention_sparsity=0.3, mlp_sparsity=0.0))
