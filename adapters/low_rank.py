"""Static K, low rank (SVD-LLM, ASVD): W[K,N] becomes A[K,r]·B[r,N], two smaller GEMMs.

selection 'svd' (the baseline): the plain truncated SVD of each weight. 'svd_llm' (SVD-LLM, arXiv
2403.07378): truncation-aware data whitening; with S the lower Cholesky factor of X·Xᵀ (X the Linear's
inputs on the calibration tokens) and W·S = UΣVᵀ, A = Σ_r^½ V_rᵀ S⁻¹ and B = U_r Σ_r^½, so that
‖(W − B·A)·X‖_F² is the sum of the dropped σ_i² of W·S, the least any rank-r weight reaches.
'asvd' (ASVD, arXiv 2312.05821): activation-aware scaling S = diag(mean over tokens |X_j|)^α with
α = 0.5 (the default of hahnyuan/ASVD4LLM and of every command in its README), SVD of W·S, S⁻¹ folded
into A. Both read X on the dense model, as SVD-LLM's profiling (profle_svdllm, and its low-resource
variant that runs the dense layers one at a time) and ASVD's calib_input_distribution do; here one
layer at a time (layerwise.py). Those codes hook every Linear: q/k/v (and gate/up) read the same
input, so the one statistic computed per group here is the matrix they compute three (two) times.
Not here: SVD-LLM's parameter update after truncation (the LoRA update of the factors, and the
least-squares update of U of its code's step 2) and ASVD's sensitivity-based search of a rank per
layer; every Linear keeps the rank the declared sparsity gives, so the shapes, and so the latency,
are the same for the three selections.
The square root of the singular values goes to each factor so both stay on the same scale.
Each projection keeps its attribute name; its GEMMs are the children `a` (K -> r) and `b` (r -> N).
No transformers config describes factors, so a checkpoint holds the product B·A as a dense
(rank-r) weight: it reloads anywhere, with the quality of the point but the dense cost.
"""

from __future__ import annotations

import torch
from torch import nn

from prunereg.spec.parameters import LowRankParams

from .base import PROJECTIONS, Adapter, check_calibration
from .layerwise import absolute_sums, gram, prune_layerwise

ALPHA = 0.5
"""ASVD's exponent of the activation scaling."""
DAMPENING = (1e-10, 1e-8, 1e-6, 1e-4, 1e-2)
"""Shares of its mean diagonal added to an X·Xᵀ that is not positive definite, tried in turn."""


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


def truncated_svd(m: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(left [N, r], right [r, K]) whose product is m's best rank-r approximation, √σ in each factor.

    Through the eigenvectors of the smaller Gram matrix (mᵀ·m or m·mᵀ): the same rank-r factors as
    a full SVD, at the cost of one eigendecomposition of min(K, N)², seconds instead of minutes for
    the 224 projections of an 8B model on a GPU.
    """
    tall = m.shape[0] >= m.shape[1]  # out_features >= in_features: eigenvectors span the inputs
    values, vectors = torch.linalg.eigh(m.T @ m if tall else m @ m.T)
    top = vectors[:, -rank:].flip(-1)
    root = values[-rank:].flip(-1).clamp_min(torch.finfo(m.dtype).tiny).sqrt().sqrt()
    if tall:
        return (m @ top) / root, root[:, None] * top.T
    return top * root, (top.T @ m) / root[:, None]


def factorize(linear: nn.Linear, rank: int, scaling: torch.Tensor | None = None) -> LowRankLinear:
    """Truncated SVD of W (float64 on CPU, float32 on CUDA), or of W·S with S⁻¹ folded into A.

    `scaling`: ASVD's diagonal as a vector [K], or SVD-LLM's lower-triangular S [K, K] (applied and
    inverted in float64, a triangular solve rather than an explicit inverse).
    """
    weight = linear.weight.detach()
    w = weight.to(torch.float64 if weight.device.type == "cpu" else torch.float32)
    if scaling is None:
        b_weight, a_weight = truncated_svd(w, rank)
    elif scaling.dim() == 1:
        s = scaling.to(w)
        b_weight, a_weight = truncated_svd(w * s, rank)
        a_weight = a_weight / s
    else:
        s = scaling.to(device=w.device, dtype=torch.float64)
        b_weight, a_weight = truncated_svd((w.double() @ s).to(w.dtype), rank)
        a_weight = torch.linalg.solve_triangular(s, a_weight.double(), upper=False, left=False)
    kwargs = {"device": weight.device, "dtype": weight.dtype}
    a = nn.Linear(linear.in_features, rank, bias=False, **kwargs)
    b = nn.Linear(rank, linear.out_features, bias=linear.bias is not None, **kwargs)
    with torch.no_grad():
        a.weight.copy_(a_weight)
        b.weight.copy_(b_weight)
        if linear.bias is not None:
            b.bias.copy_(linear.bias.detach())
    return LowRankLinear(a, b)


def whitening(gram_matrix: torch.Tensor) -> torch.Tensor:
    """SVD-LLM's S: the lower Cholesky factor of X·Xᵀ, in float64.

    X·Xᵀ is singular when the calibration has fewer tokens than the Linear has inputs, or a dead
    input; not positive definite (Cholesky fails or a pivot² is below K·ε of the largest diagonal
    entry), it gets the first share of DAMPENING × its mean diagonal on the diagonal that makes it
    so. SVD-LLM's code adds (1e-6 − λ_min)·I instead, an absolute amount, and only when Cholesky fails.
    """
    h = gram_matrix.double()
    floor = h.shape[0] * torch.finfo(h.dtype).eps * float(h.diagonal().max())
    scale = float(h.diagonal().mean()) or 1.0
    identity = torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    for share in (0.0, *DAMPENING):
        factor, info = torch.linalg.cholesky_ex(h + share * scale * identity)
        if int(info) == 0 and float(factor.diagonal().min()) ** 2 > floor:
            return factor
    raise ValueError(f"X·Xᵀ is not positive definite even with {DAMPENING[-1]:.0%} of its mean diagonal added")


def activation_scaling(absolute_sum: torch.Tensor, tokens: int) -> torch.Tensor:
    """ASVD's diagonal (mean over tokens |X_j|)^α, plus 1e-6 so a dead input divides safely, as their code."""
    return (absolute_sum.double() / tokens).pow(ALPHA) + 1e-6


class LowRank(Adapter[LowRankParams]):
    name = "low_rank"

    def apply(self, model, params: LowRankParams, calibration=None):
        check_calibration(params, calibration)
        places = {}
        for layer in model.model.layers:
            for projection in params.projections:
                parent_name, names = PROJECTIONS[projection]
                parent = getattr(layer, parent_name)
                places.update({id(getattr(parent, name)): (parent, name) for name in names})
        if params.selection == "svd":
            for parent, name in places.values():
                linear = getattr(parent, name)
                setattr(parent, name, factorize(linear, params.rank(linear.in_features, linear.out_features)))
            return model
        last: list = [None, None]  # q/k/v and gate/up share their input's statistic: scale it once

        def replace(linear: nn.Linear, statistic: torch.Tensor, tokens: int) -> None:
            if last[0] is not statistic:
                scaling = (
                    whitening(statistic) if params.selection == "svd_llm" else activation_scaling(statistic, tokens)
                )
                last[:] = [statistic, scaling]
            parent, name = places[id(linear)]
            setattr(parent, name, factorize(linear, params.rank(linear.in_features, linear.out_features), last[1]))

        statistic = gram if params.selection == "svd_llm" else absolute_sums
        prune_layerwise(model, params.projections, calibration, statistic, replace, inputs_from="dense")
        return model

    def as_plain_model(self, model):
        """In place: every factorised projection becomes one Linear holding B·A."""
        for module in list(model.modules()):
            for name, child in list(module.named_children()):
                if isinstance(child, LowRankLinear):
                    setattr(module, name, child.as_linear())
        return model


ADAPTER = LowRank()
