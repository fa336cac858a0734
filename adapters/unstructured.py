"""Unstructured pruning (Wanda, SparseGPT unstructured): single weights set to zero.

In every output row of each listed projection, the `sparsity` share of weights of smallest |w|
is zeroed: Wanda's per-output comparison group, with magnitude in place of |w|·‖x‖ (no
activation statistics). Tensors keep their shape and run on dense kernels at full cost, so the
measured speedup is about 1 whatever the sparsity: that is the point the registry shows.
"""

from __future__ import annotations

import torch

from prunereg.spec.parameters import UnstructuredParams

from .base import Adapter, linears


def prune_rows(weight: torch.Tensor, sparsity: float) -> None:
    """Zero the round(sparsity·K) smallest-|w| weights of every row, in place."""
    count = round(sparsity * weight.shape[1])
    if count:
        smallest = weight.detach().abs().float().topk(count, dim=1, largest=False).indices
        weight.scatter_(1, smallest, 0.0)


class Unstructured(Adapter[UnstructuredParams]):
    name = "unstructured"

    def apply(self, model, params: UnstructuredParams, calibration=None):
        with torch.no_grad():
            for linear in linears(model, params.projections):
                prune_rows(linear.weight, params.sparsity)
        return model


ADAPTER = Unstructured()
