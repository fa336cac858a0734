"""unstructured: the smallest-|w| share of every output row zeroed; shapes (and cost) unchanged."""

from __future__ import annotations

import copy

import pytest
import torch
from tiny_models import ARCHITECTURES, tiny

from prunereg.adapters import get_adapter
from prunereg.adapters.base import linears
from prunereg.spec.parameters import UnstructuredParams

ADAPTER = get_adapter("unstructured")


def count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def nonzero(model) -> int:
    return sum(int(torch.count_nonzero(p)) for p in model.parameters())


@pytest.mark.parametrize("model_type", ARCHITECTURES)
@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.9])
def test_exact_zero_count_per_row_and_smallest_weights_go(model_type, sparsity):
    model = tiny(model_type)
    listed, unlisted = ["qkv_proj", "o_proj", "down_proj"], ["gate_up_proj"]
    pruned = ADAPTER.apply(copy.deepcopy(model), UnstructuredParams(sparsity=sparsity, projections=listed))
    zeros = 0
    for dense, sparse in zip(linears(model, listed), linears(pruned, listed)):
        assert sparse.weight.shape == dense.weight.shape
        removed = sparse.weight == 0
        assert (removed.sum(1) == round(sparsity * dense.in_features)).all()
        magnitude = dense.weight.abs()
        kept_min = magnitude.masked_fill(removed, float("inf")).min(1).values
        removed_max = magnitude.masked_fill(~removed, -1.0).max(1).values
        assert (kept_min > removed_max).all()
        assert torch.equal(sparse.weight[~removed], dense.weight[~removed])
        zeros += int(removed.sum())
    for dense, same in zip(linears(model, unlisted), linears(pruned, unlisted)):
        assert torch.equal(same.weight, dense.weight)
    assert count(pruned) == count(model) and nonzero(pruned) == nonzero(model) - zeros
    expected = sum(round(sparsity * d.in_features) * d.out_features for d in linears(model, listed))
    assert zeros == expected
