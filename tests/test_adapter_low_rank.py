"""low_rank: each projection becomes two Linears from its truncated SVD."""

from __future__ import annotations

import copy

import pytest
import torch
from tiny_models import ARCHITECTURES, IDS, logits, tiny
from transformers import AutoModelForCausalLM

from prunereg.adapters import get_adapter
from prunereg.adapters.base import PROJECTIONS
from prunereg.adapters.low_rank import LowRankLinear
from prunereg.harness.checkpoint import save_pruned
from prunereg.spec.parameters import LowRankParams

ADAPTER = get_adapter("low_rank")


def projections(model, names=tuple(PROJECTIONS)):
    """(dense-side name, module) of every listed projection in every layer."""
    for layer in model.model.layers:
        for projection in names:
            parent, attrs = PROJECTIONS[projection]
            for attr in attrs:
                yield attr, getattr(getattr(layer, parent), attr)


@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_factors_have_rank_r_and_r_times_k_plus_n_parameters(model_type):
    model = tiny(model_type)
    params = LowRankParams(sparsity=0.4, projections=["qkv_proj", "down_proj"])
    pruned = ADAPTER.apply(copy.deepcopy(model), params)
    removed = 0
    for (name, dense), (_, small) in zip(projections(model), projections(pruned)):
        if name in ("q_proj", "k_proj", "v_proj", "down_proj"):
            k, n = dense.in_features, dense.out_features
            r = params.rank(k, n)
            assert isinstance(small, LowRankLinear) and small.rank == r
            assert (small.a.in_features, small.a.out_features, small.b.in_features, small.b.out_features) == (
                k,
                r,
                r,
                n,
            )
            assert small.a.bias is None and (small.b.bias is None) == (dense.bias is None)
            weights = sum(p.numel() for p in small.parameters()) - (n if dense.bias is not None else 0)
            assert weights == r * (k + n)
            removed += k * n - r * (k + n)
        else:
            assert isinstance(small, torch.nn.Linear) and torch.equal(small.weight, dense.weight)
    assert sum(p.numel() for p in pruned.parameters()) == sum(p.numel() for p in model.parameters()) - removed
    assert 0.35 < removed / sum(d.weight.numel() for n, d in projections(model, ["qkv_proj", "down_proj"])) <= 0.45


@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_error_decreases_as_the_rank_grows(model_type):
    """Eckart-Young: each weight's error falls with the rank; the model's output follows."""
    model = tiny(model_type)
    reference = logits(model, IDS)
    weight_errors, output_errors = [], []
    for sparsity in (0.8, 0.5, 0.2, 0.0):
        pruned = ADAPTER.apply(copy.deepcopy(model), LowRankParams(sparsity=sparsity))
        output_errors.append((logits(pruned, IDS) - reference).norm().item())
        pairs = zip(projections(model), projections(pruned))
        weight_errors.append(
            [(small.b.weight @ small.a.weight - dense.weight).norm().item() for (_, dense), (_, small) in pairs]
        )
    for per_rank in zip(*weight_errors):
        assert list(per_rank) == sorted(per_rank, reverse=True) and per_rank[-1] < 1e-4
    assert output_errors[1] > output_errors[2] > output_errors[3] and output_errors[3] < 1e-3


@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_a_checkpoint_holds_the_product_and_reloads_with_plain_transformers(tmp_path, model_type):
    pruned = ADAPTER.apply(tiny(model_type), LowRankParams(sparsity=0.4))
    expected = logits(pruned, IDS)
    save_pruned(ADAPTER, pruned, None, tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    torch.testing.assert_close(logits(reloaded, IDS), expected, rtol=1e-4, atol=1e-4)
