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

from .base import Adapter
from .semi_structured import PROJECTIONS


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
            self.in_features, self.out_features, bias=self.b.bias is not None, device=weight.device, dtype=self.a.weight.dtype
        )
        with torch.no_grad():
            linear.weight.copy_(weight)
            if self.b.bias is not None:
                linear.bias.copy_(self.b.bias.detach())
        return linear


def factorize(linear: nn.Linear, rank: int) -> LowRankLinear:
    weight = linear.weight.detach()
    u, s, vh = torch.linalg.svd(weight.float(), full_matrices=False)
    root = s[:rank].sqrt()
    kwargs = {"device": weight.device, "dtype": weight.dtype}
    a = nn.Linear(linear.in_features, rank, bias=False, **kwargs)
    b = nn.Linear(rank, linear.out_features, bias=linear.bias is not None, **kwargs)
    with torch.no_grad():
        a.weight.copy_(root[:, None] * vh[:rank])
        b.weight.copy_(u[:, :rank] * root)
        if linear.bias is not None:
            b.bias.copy_(linear.bias.detach())
    return LowRankLinear(a, b)


class LowRank(Adapter):
    name = "low_rank"

    def apply(self, model, params: LowRankParams):
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
