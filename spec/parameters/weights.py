"""Weights along K: 2:4 and unstructured sparsity, and low-rank factorization of the projections."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..calibration import Calibration
from ..catalog import ModelArchitecture
from ..taxonomy import Granularity
from .base import (
    ALL_PROJECTIONS,
    PROJECTION_LINEARS,
    AdapterParams,
    Projection,
    linear_shapes,
    one_of,
    parameter_count,
)


class WeightSelection(AdapterParams):
    """Which weights go: |w| (the baseline) or a paper's criterion scored on calibration data."""

    selection: Literal["magnitude", "wanda", "sparsegpt"] = Field(
        "magnitude",
        description=(
            "which weights are zeroed; the calibrated criteria go layer by layer, on the outputs of the "
            "already-pruned earlier layers"
        ),
        json_schema_extra=one_of(
            {
                "magnitude": "baseline: the weights of smallest |w|",
                "wanda": "Wanda (arXiv 2306.11695): per output row, the weights of smallest |W_ij|·‖X_j‖₂",
                "sparsegpt": (
                    "SparseGPT (arXiv 2301.00774): the OBS mask from H = 2·X·Xᵀ, with the update of the weights kept"
                ),
            }
        ),
    )
    calibration: Calibration = Field(default_factory=Calibration, description="what 'wanda'/'sparsegpt' score on")

    def calibration_needed(self) -> Calibration | None:
        return None if self.selection == "magnitude" else self.calibration

    def shape_stand_in(self) -> AdapterParams | None:
        """'magnitude' zeroes as many weights in the same pattern."""
        return self._with_selection(("wanda", "sparsegpt"), "magnitude")


class SemiStructuredParams(WeightSelection):
    """2:4 sparsity along K: in every group of four consecutive input weights, two are zero."""

    granularities = frozenset({Granularity.pattern_2_4})

    projections: list[Projection] = Field(
        default_factory=lambda: list(ALL_PROJECTIONS),
        min_length=1,
        max_length=4,
        description="which GEMMs are sparsified",
    )

    def misfit(self, arch: ModelArchitecture) -> str | None:
        """2:4 groups four consecutive weights along K, so each listed projection's K must divide by 4."""
        shapes = linear_shapes(arch)
        k = {projection: shapes[PROJECTION_LINEARS[projection][0]][0] for projection in self.projections}
        bad = [f"{p} (K={k[p]})" for p in self.projections if k[p] % 4]
        return f"2:4 needs K divisible by 4: {', '.join(bad)}" if bad else None


class LowRankParams(AdapterParams):
    """W[K,N] becomes A[K,r]·B[r,N] by truncated SVD, r chosen so a `sparsity` share of the parameters goes."""

    granularities = frozenset({Granularity.rank})

    sparsity: float = Field(ge=0.0, le=0.95, description="share of each projection's parameters removed")
    projections: list[Projection] = Field(
        default_factory=lambda: list(ALL_PROJECTIONS),
        min_length=1,
        max_length=4,
        description="which GEMMs are factorised",
    )
    selection: Literal["svd", "svd_llm", "asvd"] = Field(
        "svd",
        description="how the rank-r factors are found; X the Linear's inputs on the calibration data, on the dense model",
        json_schema_extra=one_of(
            {
                "svd": "baseline: truncated SVD of W",
                "svd_llm": "SVD-LLM's truncation-aware whitening (arXiv 2403.07378): SVD of W·S, S the Cholesky factor of X·Xᵀ",
                "asvd": "ASVD's activation-aware scaling (arXiv 2312.05821): SVD of W·diag(mean |X_j|)^0.5",
            }
        ),
    )
    calibration: Calibration = Field(default_factory=Calibration, description="what 'svd_llm'/'asvd' scale by")

    def calibration_needed(self) -> Calibration | None:
        return None if self.selection == "svd" else self.calibration

    def shape_stand_in(self) -> AdapterParams | None:
        """Plain SVD factors to the same rank."""
        return self._with_selection(("svd_llm", "asvd"), "svd")

    def rank(self, k: int, n: int) -> int:
        """r with r·(K+N) ≈ (1 − sparsity)·K·N; at 0 % the full rank min(K, N) keeps the GEMM exact.

        On matrices of 512 and more rows and columns r is rounded down to a multiple of 8: bf16
        tensor cores need 16-byte aligned dimensions, and an unaligned rank ran 2-3x slower than
        dense on an H200 (benchmarks/h200_taxonomy.md).
        """
        if self.sparsity == 0.0:
            return min(k, n)
        rank = int((1.0 - self.sparsity) * k * n / (k + n))
        if min(k, n) >= 512:
            rank -= rank % 8
        return max(1, min(min(k, n), rank))

    def parameters_after(self, arch: ModelArchitecture) -> int:
        """Each factorised Linear keeps r·(K+N) weights instead of K·N (its bias moves to B)."""
        shapes = linear_shapes(arch)
        factorised = [shapes[name] for projection in self.projections for name in PROJECTION_LINEARS[projection]]
        saved = sum(k * n - self.rank(k, n) * (k + n) for k, n in factorised)
        return parameter_count(arch) - arch.num_hidden_layers * saved


class UnstructuredParams(WeightSelection):
    """Single weights set to zero (in each output row, or each SparseGPT block); dense kernels run them at full cost."""

    granularities = frozenset({Granularity.weight})

    sparsity: float = Field(ge=0.0, le=0.99, description="share of each projection's weights zeroed")
    projections: list[Projection] = Field(
        default_factory=lambda: list(ALL_PROJECTIONS), min_length=1, max_length=4, description="which GEMMs are pruned"
    )
