"""token_routing: exact capacity, 0 % = dense, fewer MLP rows, cached decoding = full forward."""

from __future__ import annotations

import copy

import pytest
import torch
from tiny_models import ARCHITECTURES, logits, tiny

from prunereg.adapters import get_adapter
from prunereg.adapters.token_routing import RoutedMLP, routed, slot_table
from prunereg.spec.catalog import models
from prunereg.spec.parameters import TokenRoutingParams

W = TokenRoutingParams.window
IDS = torch.randint(97, (2, 37), generator=torch.Generator().manual_seed(3))  # 37 tokens: two windows and a part


def apply(model, **params):
    return get_adapter("token_routing").apply(model, TokenRoutingParams(**params))


def mlp_rows(model, ids, **kwargs) -> dict[int, int]:
    """Rows that reach gate_proj, per layer, in one forward."""
    rows: dict[int, int] = {}
    hooks = [
        layer.get_submodule("mlp.mlp.gate_proj").register_forward_hook(
            lambda m, a, o, i=i: rows.__setitem__(i, rows.get(i, 0) + a[0].shape[0])
        )
        for i, layer in enumerate(model.model.layers)
        if isinstance(layer.mlp, RoutedMLP)
    ]
    with torch.inference_mode():
        model(ids, **kwargs)
    for hook in hooks:
        hook.remove()
    return rows


@pytest.mark.parametrize("sparsity", [0.0, 0.25, 0.5, 0.875, 0.9375])
def test_every_window_of_every_sequence_routes_exactly_k_tokens(sparsity):
    params = TokenRoutingParams(sparsity=sparsity, seed=5)
    k, table = params.capacity(), slot_table(params)
    positions = torch.arange(40 * W)[None]
    for rank in range(4):
        chosen = routed(positions, 5, rank, params, table)
        assert (chosen.view(5, 40, W).sum(-1) == k).all()


@pytest.mark.parametrize("batch", [1, 2, 3, 8, 16])
def test_one_step_of_a_batch_and_one_token_across_layers_are_balanced(batch):
    params = TokenRoutingParams(sparsity=0.75, layers="all")
    k, table = params.capacity(), slot_table(params)
    for p in range(0, 300, 7):
        step = torch.stack([routed(torch.tensor([[p]]), batch, rank, params, table).sum() for rank in range(6)])
        assert set(step.tolist()) <= {batch * k // W, -(-batch * k // W)}
        across_layers = sum(int(routed(torch.tensor([[p]]), 1, rank, params, table)[0, 0]) for rank in range(6))
        assert across_layers in {6 * k // W, -(-6 * k // W)}


@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_the_mlp_runs_on_fewer_tokens_and_the_router_on_all(model_type):
    model = apply(tiny(model_type), sparsity=0.75, layers="alternate")
    ids = IDS[:, : 2 * W]
    assert mlp_rows(model, ids, use_cache=False) == {1: 2 * 2 * 4, 3: 2 * 2 * 4, 5: 2 * 2 * 4}
    seen = []
    hook = model.model.layers[1].mlp.router.register_forward_hook(lambda m, a, o: seen.append(a[0].shape[:2]))
    with torch.inference_mode():
        model(ids, use_cache=False)
    hook.remove()
    assert seen == [torch.Size([2, 2 * W])]
    assert [name for name, _ in model.model.layers[1].mlp.mlp.named_children()][:3] == [
        "gate_proj",
        "up_proj",
        "down_proj",
    ]
    assert not isinstance(model.model.layers[0].mlp, RoutedMLP)


@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_routing_equals_zeroing_the_mlp_output_of_skipped_tokens(model_type):
    model = tiny(model_type)
    params = TokenRoutingParams(sparsity=0.5, layers="all", seed=2)
    pruned = get_adapter("token_routing").apply(copy.deepcopy(model), params)
    table = slot_table(params)
    positions = torch.arange(IDS.shape[1])[None]
    for rank, layer in enumerate(model.model.layers):
        keep = routed(positions, IDS.shape[0], rank, params, table)
        layer.mlp.register_forward_hook(lambda m, a, out, keep=keep: out * keep[..., None])
    torch.testing.assert_close(logits(pruned, IDS), logits(model, IDS), rtol=1e-4, atol=1e-5)


def test_a_decode_step_of_eight_sequences_runs_the_mlp_on_the_declared_share():
    model = apply(tiny("llama"), sparsity=0.5)
    ids = torch.randint(97, (8, 1))
    rows = mlp_rows(model, ids, position_ids=torch.full((8, 1), 40), use_cache=False)
    assert rows == {1: 4, 3: 4, 5: 4}


def test_sparsity_must_be_whole_tokens_of_a_window():
    params = TokenRoutingParams(sparsity=0.3)
    assert "whole number of tokens" in params.misfit(models()["prunereg-mini"])
    with pytest.raises(ValueError, match="whole number of tokens"):
        get_adapter("token_routing").apply(tiny("llama"), params)
