"""Static K, low rank (SVD-LLM, ASVD): W[K,N] becomes A[K,r]·B[r,N], two smaller GEMMs.

Plain truncated SVD of each weight (no activation whitening, no truncation-aware update), so
quality is a lower bound for the methods named; the shapes, and so the latency, are theirs.
The square root of the singular values goes to each factor so both stay on the same scale.
Each projection keeps its attribute name; its GEMMs are the children `a` (K -> r) and `b` (r -> N).
No transformers config describes factors, so a checkpoint holds the product B·A as a dense
(rank-r) weight: it reloads anywhere, with the quality of the point but the dense cost.
"""

from __future__ import annotations

import torch
from torch import nn

from prunereg.spec.parameters import LowRankParams

from .base import PROJECTIONS, Adapter


class LowRankLinear(nn.Module):
    """y = B(A(x)): A has no bias, B carries the original one."""

    def __init__(self, a: nn.Linear, b: nn.Linear):
        super().__init__()
        self.a, self.b = a, b
        self.in_features, self.out_features, self.rank = a.in_features, b.out_features, a.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x))

    def as_linear(self) -> nn.Linear:
        weight = self.b.weight.detach().float() @ self.a.weight.detach().float()
        linear = nn.Linear(
            self.in_features,
            self.out_features,
            bias=self.b.bias is not None,
            device=weight.device,
            dtype=self.a.weight.dtype,
        )
        with torch.no_grad():
            linear.weight.copy_(weight)
            if self.b.bias is not None:
                linear.bias.copy_(self.b.bias.detach())
        return linear


def factorize(linear: nn.Linear, rank: int) -> LowRankLinear:
    """Truncated SVD through the eigenvectors of the smaller Gram matrix (W·Wᵀ or Wᵀ·W).

    The same rank-r factors as a full SVD, at the cost of one eigendecomposition of min(K, N)²:
    seconds instead of minutes for the 224 projections of an 8B model on a GPU.
    """
    weight = linear.weight.detach()
    w = weight.to(torch.float64 if weight.device.type == "cpu" else torch.float32)
    tall = w.shape[0] >= w.shape[1]  # out_features >= in_features: eigenvectors span the inputs
    values, vectors = torch.linalg.eigh(w.T @ w if tall else w @ w.T)
    top = vectors[:, -rank:].flip(-1)
    root = values[-rank:].flip(-1).clamp_min(torch.finfo(w.dtype).tiny).sqrt().sqrt()
    if tall:
        a_weight, b_weight = root[:, None] * top.T, (w @ top) / root
    else:
        a_weight, b_weight = (top.T @ w) / root[:, None], top * root
    kwargs = {"device": weight.device, "dtype": weight.dtype}
    a = nn.Linear(linear.in_features, rank, bias=False, **kwargs)
    b = nn.Linear(rank, linear.out_features, bias=linear.bias is not None, **kwargs)
    with torch.no_grad():
        a.weight.copy_(a_weight)
        b.weight.copy_(b_weight)
        if linear.bias is not None:
            b.bias.copy_(linear.bias.detach())
    return LowRankLinear(a, b)


class LowRank(Adapter[LowRankParams]):
    name = "low_rank"

    def apply(self, model, params: LowRankParams, calibration=None):
        for layer in model.model.layers:
            for projection in params.projections:
                parent_name, names = PROJECTIONS[projection]
                parent = getattr(layer, parent_name)
                for name in names:
                    linear = getattr(parent, name)
                    setattr(parent, name, factorize(linear, params.rank(linear.in_features, linear.out_features)))
        return model

    def as_plain_model(self, model):
        """In place: every factorised projection becomes one Linear holding B·A."""
        for module in list(model.modules()):
            for name, child in list(module.named_children()):
                if isinstance(child, LowRankLinear):
                    setattr(module, name, child.as_linear())
        return model


ADAPTER = LowRank()
