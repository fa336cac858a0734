"""Layer-by-layer calibration for the weight-level criteria of Wanda and SparseGPT.

Both papers (and their public code, locuslab/wanda and IST-DASLab/sparsegpt) prune one decoder layer
at a time: the calibration batches' hidden states enter layer 0; for layer i, one forward of the
still-dense layer collects the statistics of every Linear's input (Wanda: ‖X_j‖₂ per input feature;
SparseGPT: H = 2·X·Xᵀ), all of the layer's listed Linears are pruned from them, and the layer is run
again, now pruned, to give layer i + 1 its inputs. So each layer is scored on the outputs of the
already-pruned earlier layers, as Wanda's `prune_wanda` and SparseGPT's sequential driver do.
The statistics come from forward hooks on the projections' Linear modules; q/k/v read one input, as
do gate/up, so each projection's first Linear is hooked and its statistic serves all of them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import nn

from .base import PROJECTIONS

Statistic = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]
"""(flattened input batch [tokens, K], running statistic or None) -> the new running statistic."""
CHUNK = 8
"""Calibration sequences run through a layer at once."""


def squared_norms(x: torch.Tensor, total: torch.Tensor | None) -> torch.Tensor:
    """Σ over tokens of x_j², per input feature j (Wanda's ‖X_j‖₂ is its square root)."""
    part = x.double().square().sum(0)
    return part if total is None else total + part


def absolute_sums(x: torch.Tensor, total: torch.Tensor | None) -> torch.Tensor:
    """Σ over tokens of |x_j|, per input feature j (ASVD's mean |X_j| once divided by the token count)."""
    part = x.double().abs().sum(0)
    return part if total is None else total + part


def gram(x: torch.Tensor, total: torch.Tensor | None) -> torch.Tensor:
    """Σ over tokens of x·xᵀ (SparseGPT's H up to the factor 2, which the relative dampening ignores)."""
    x = x.double()
    part = x.T @ x
    return part if total is None else total + part


class _Stop(Exception):
    """Raised by the last layer's pre-hook: everything the layers need has been captured."""


def layer_inputs(model: nn.Module, calibration: torch.Tensor) -> tuple[list[torch.Tensor], list[list[dict]]]:
    """The hidden states entering layer 0, per chunk, and the keyword arguments every layer gets, per chunk.

    Each layer's own arguments are kept (a sliding-window layer may get a different mask than a full one).
    """
    layers = list(model.get_submodule("model.layers").children())
    hidden: list[torch.Tensor] = []
    arguments: list[list[dict]] = []

    def capture(index: int):
        def hook(_module, args, kwargs):
            if index == 0:
                hidden.append(args[0] if args else kwargs.pop("hidden_states"))
                arguments.append([])
            arguments[-1].append({k: v for k, v in kwargs.items() if k != "hidden_states"})
            if index == len(layers) - 1:
                raise _Stop

        return hook

    handles = [layer.register_forward_pre_hook(capture(i), with_kwargs=True) for i, layer in enumerate(layers)]
    try:
        device = next(model.parameters()).device
        for chunk in calibration.split(CHUNK):
            try:
                model(chunk.to(device), use_cache=False)
            except _Stop:
                pass
    finally:
        for handle in handles:
            handle.remove()
    return hidden, arguments


def run_layer(layer: nn.Module, hidden: torch.Tensor, kwargs: dict) -> torch.Tensor:
    out = layer(hidden, **kwargs)
    return out[0] if isinstance(out, tuple) else out


def _statistics(layer, inputs, hidden, arguments, index, statistic: Statistic) -> tuple[list[torch.Tensor], int]:
    """One forward of the (still dense) layer: `statistic` of each hooked Linear's input, and the token count."""
    stats: list[torch.Tensor | None] = [None] * len(inputs)
    tokens = [0]

    def hook(slot: int):
        def collect(_module, args, _out):
            x = args[0].detach().reshape(-1, args[0].shape[-1])
            stats[slot] = statistic(x, stats[slot])
            if slot == 0:
                tokens[0] += x.shape[0]

        return collect

    handles = [linear.register_forward_hook(hook(slot)) for slot, linear in enumerate(inputs)]
    try:
        for chunk, kwargs in zip(hidden, arguments):
            run_layer(layer, chunk, kwargs[index])
    finally:
        for handle in handles:
            handle.remove()
    assert all(stat is not None for stat in stats)
    return [stat for stat in stats if stat is not None], tokens[0]


@torch.no_grad()
def prune_layerwise(
    model: nn.Module,
    projections,
    calibration: torch.Tensor,
    statistic: Statistic,
    prune: Callable[[nn.Linear, torch.Tensor, int], None],
    inputs_from: Literal["pruned", "dense"] = "pruned",
) -> None:
    """Prune every listed Linear, layer by layer, with `prune(linear, statistic, tokens)` (in place).

    `inputs_from="dense"` feeds layer i + 1 what the still-dense layer i gives (statistics of the
    dense model, as SVD-LLM and ASVD collect them), one layer in memory at a time all the same;
    `prune` may then also replace the Linear in its parent.
    """
    hidden, arguments = layer_inputs(model, calibration)
    layers = list(model.get_submodule("model.layers").children())
    for index, layer in enumerate(layers):
        groups = [[getattr(getattr(layer, p), n) for n in names] for p, names in (PROJECTIONS[q] for q in projections)]
        stats, tokens = _statistics(layer, [group[0] for group in groups], hidden, arguments, index, statistic)
        last = index == len(layers) - 1
        if inputs_from == "dense" and not last:
            hidden = [run_layer(layer, chunk, kwargs[index]) for chunk, kwargs in zip(hidden, arguments)]
        for group, stat in zip(groups, stats):
            for linear in group:
                prune(linear, stat, tokens)
        if inputs_from == "pruned" and not last:
            hidden = [run_layer(layer, chunk, kwargs[index]) for chunk, kwargs in zip(hidden, arguments)]


def wanda_scores(weight: torch.Tensor, squared: torch.Tensor) -> torch.Tensor:
    """Wanda's |W_ij|·‖X_j‖₂ for W [out, in] and the per-input Σ x_j² over the calibration tokens."""
    return weight.detach().abs().double() * squared.sqrt().reshape(1, -1)


def mask_n_of_m(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """True for the m − n highest scores of every m consecutive ones along the last dim (n of m pruned)."""
    rows, k = scores.shape
    if k % m:
        raise ValueError(f"{n}:{m} sparsity needs K divisible by {m}, got {k}")
    groups = scores.detach().reshape(rows, k // m, m)
    kept = torch.zeros_like(groups, dtype=torch.bool)
    kept.scatter_(-1, groups.topk(m - n, dim=-1).indices, True)
    return kept.reshape(rows, k)


def sparsegpt_prune(
    weight: torch.Tensor, hessian: torch.Tensor, sparsity: float = 0.0, n_of_m: tuple[int, int] | None = None
) -> None:
    """SparseGPT (arXiv 2301.00774, Algorithm 1) on W [out, in], in place; `n_of_m` = (pruned, group size).

    H = X·Xᵀ dampened by 1 % of its mean diagonal; with the upper Cholesky factor U of H⁻¹, columns
    are visited in blocks of 128: the block's mask is chosen by w²/U_jj² (unstructured: the lowest
    `sparsity` share of the whole block; n:m: the lowest n of every m consecutive inputs of a row,
    chosen when the group's first column is reached), each pruned weight's error is spread over the
    remaining columns of the block by the OBS update, and the block's error over the later columns.
    """
    w = weight.detach().double().clone()
    h = hessian.double().clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h.diagonal().add_(0.01 * torch.diag(h).mean())
    u = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    columns, block = w.shape[1], 128
    for i1 in range(0, columns, block):
        i2 = min(i1 + block, columns)
        w1, u1 = w[:, i1:i2].clone(), u[i1:i2, i1:i2]
        errors = torch.zeros_like(w1)
        mask = torch.zeros_like(w1, dtype=torch.bool)
        diagonal = torch.diag(u1).reshape(1, -1)
        if n_of_m is None:
            count = round(sparsity * w1.numel())
            if count:
                score = (w1.square() / diagonal.square()).flatten()
                mask.view(-1)[score.topk(count, largest=False).indices] = True
        for i in range(i2 - i1):
            if n_of_m is not None and i % n_of_m[1] == 0:
                n, m = n_of_m
                score = w1[:, i : i + m].square() / diagonal[:, i : i + m].square()
                mask[:, i : i + m].scatter_(1, score.topk(n, dim=1, largest=False).indices, True)
            column = w1[:, i]
            quantized = column.masked_fill(mask[:, i], 0.0)
            error = (column - quantized) / u1[i, i]
            w1[:, i:] -= error.unsqueeze(1) @ u1[i, i:].unsqueeze(0)
            w1[:, i] = quantized
            errors[:, i] = error
        w[:, i1:i2] = w1
        w[:, i2:] -= errors @ u[i1:i2, i2:]
    weight.copy_(w.to(weight.dtype))
