"""Unstructured pruning (Wanda, SparseGPT unstructured): single weights set to zero.

selection 'magnitude' (the baseline): in every output row of each listed projection, the
`sparsity` share of weights of smallest |w| is zeroed. 'wanda' (arXiv 2306.11695): the same per-row
comparison group with Wanda's score |W_ij|·‖X_j‖₂, X the Linear's inputs over all calibration tokens.
'sparsegpt' (arXiv 2301.00774): the OBS mask (the lowest `sparsity` share of w²/[H⁻¹]_jj² in each
block of 128 input columns) with the weight update. Both calibrated selections prune layer by
layer on the outputs of the already-pruned earlier layers, as the papers' code does (layerwise.py).
Tensors keep their shape and run on dense kernels at full cost, so the measured speedup is about 1
whatever the sparsity: that is the point the registry shows.
"""

from __future__ import annotations

import torch

from prunereg.spec.parameters import UnstructuredParams

from .base import Adapter, check_calibration, linears
from .layerwise import gram, mask_n_of_m, prune_layerwise, sparsegpt_prune, squared_norms, wanda_scores


def prune_rows(weight: torch.Tensor, sparsity: float, scores: torch.Tensor | None = None) -> None:
    """Zero the round(sparsity·K) lowest-score weights of every row (score |w| by default), in place."""
    count = round(sparsity * weight.shape[1])
    if count:
        scores = weight.detach().abs().float() if scores is None else scores
        weight.scatter_(1, scores.topk(count, dim=1, largest=False).indices, 0.0)


def calibrated(selection: str, sparsity: float = 0.0, n_of_m: tuple[int, int] | None = None):
    """The statistic and the per-Linear pruning of a calibrated selection, for `prune_layerwise`."""
    if selection == "wanda":

        def wanda(linear, squared, _tokens):
            if n_of_m is None:
                prune_rows(linear.weight, sparsity, wanda_scores(linear.weight, squared))
            else:
                linear.weight.mul_(mask_n_of_m(wanda_scores(linear.weight, squared), *n_of_m))

        return squared_norms, wanda
    if selection == "sparsegpt":
        return gram, lambda linear, hessian, _tokens: sparsegpt_prune(linear.weight, hessian, sparsity, n_of_m)
    raise ValueError(f"selection {selection!r} is not a calibrated one")


class Unstructured(Adapter[UnstructuredParams]):
    name = "unstructured"

    def apply(self, model, params: UnstructuredParams, calibration=None):
        check_calibration(params, calibration)
        if params.selection != "magnitude" and params.sparsity > 0:
            prune_layerwise(model, params.projections, calibration, *calibrated(params.selection, params.sparsity))
            return model
        with torch.no_grad():
            for linear in linears(model, params.projections):
                prune_rows(linear.weight, params.sparsity)
        return model


ADAPTER = Unstructured()
