"""Static K, 2:4 (SparseGPT 2:4, Wanda 2:4): two of every four consecutive weights along K are zero.

selection 'magnitude' (the baseline): in each group of four input weights of an output row, the
two of largest |w| stay. 'wanda' (arXiv 2306.11695): the two of largest |W_ij|·‖X_j‖₂, X the
Linear's inputs over all calibration tokens. 'sparsegpt' (arXiv 2301.00774): the two of lowest
w²/[H⁻¹]_jj² go, with the OBS update of the remaining weights. Both calibrated selections prune layer
by layer on the outputs of the already-pruned earlier layers, as the papers' code does (layerwise.py). Where the hardware has sparse tensor cores (CUDA, compute capability >= 8.0,
float16/bfloat16) and the shape meets PyTorch's constraints, the weight becomes a
`SparseSemiStructuredTensor` (cuSPARSELt when available, else CUTLASS), so the half-size sparse
GEMM really runs; elsewhere the masked weight stays dense and runs at full cost. `kernel_of`
says which, so a run can record how it ran. A checkpoint holds the masked dense weights; applying
the adapter to it again changes nothing (the zeros are the smallest of their group).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from prunereg.spec.parameters import SemiStructuredParams

from .base import Adapter, check_calibration, linears
from .layerwise import mask_n_of_m, prune_layerwise
from .unstructured import calibrated


def mask_2_4(weight: torch.Tensor) -> torch.Tensor:
    """True for the two largest-|w| weights of every four consecutive ones along the last dim."""
    if weight.shape[1] % 4:
        raise ValueError(f"2:4 needs K divisible by 4, got {weight.shape[1]}")
    return mask_n_of_m(weight.detach().abs().float(), 2, 4)


def _sparse_backend(weight: torch.Tensor):
    """The semi-structured class that can hold this weight on this device, or None."""
    if weight.device.type != "cuda" or weight.dtype not in (torch.float16, torch.bfloat16):
        return None
    if torch.cuda.get_device_capability(weight.device) < (8, 0):
        return None
    cusparselt = torch.backends.cusparselt.is_available()
    cls = (
        torch.sparse.SparseSemiStructuredTensorCUSPARSELT
        if cusparselt
        else torch.sparse.SparseSemiStructuredTensorCUTLASS
    )
    limits = cls._DTYPE_SHAPE_CONSTRAINTS[weight.dtype]
    rows, cols = weight.shape
    if rows % limits.sparse_min_rows or cols % limits.sparse_min_cols:
        return None
    return cls


def to_sparse(weight: torch.Tensor) -> torch.Tensor | None:
    """The 2:4 weight as a sparse-tensor-core tensor, or None where that cannot run."""
    cls = _sparse_backend(weight)
    if cls is None:
        return None
    from torch.sparse import SparseSemiStructuredTensor, to_sparse_semi_structured

    forced = SparseSemiStructuredTensor._FORCE_CUTLASS
    SparseSemiStructuredTensor._FORCE_CUTLASS = cls is torch.sparse.SparseSemiStructuredTensorCUTLASS
    try:
        return to_sparse_semi_structured(weight.contiguous())
    except RuntimeError:
        return None
    finally:
        SparseSemiStructuredTensor._FORCE_CUTLASS = forced


def kernel_of(linear: nn.Module) -> str:
    """How this Linear's GEMM runs: on sparse tensor cores (which library) or as a masked dense GEMM."""
    weight = getattr(linear, "weight", None)
    if isinstance(weight, torch.sparse.SparseSemiStructuredTensorCUSPARSELT):
        return "sparse 2:4 (cuSPARSELt)"
    if isinstance(weight, torch.sparse.SparseSemiStructuredTensorCUTLASS):
        return "sparse 2:4 (CUTLASS)"
    return "masked dense"


CUSPARSELT = torch.sparse.SparseSemiStructuredTensorCUSPARSELT


class SparseLinear(nn.Linear):
    """A Linear on sparse tensor cores whose output is row-major.

    PyTorch's semi-structured linear computes W·xᵀ column-major with cuSPARSELt's default algorithm, and
    its output then needs a copy to row-major: q/k/v with a strided last dimension make SDPA fall back to
    its slow math path (seen on an H200). On an H100 that copy took up to half of the call, and the
    default algorithm ran slower than a searched one: gate_proj at 8192 tokens 1881 µs against 1012 µs
    for one `_cslt_sparse_mm` with a row-major result and a searched algorithm, dense 1392 µs; at one
    token 36–68 µs against 24–27 µs (results/h100-gemm-2-4/ as of commit 926581d). So on cuSPARSELt every
    call is that one kernel, through the `prunereg::sparse_linear_2_4` op; elsewhere (CUTLASS) the
    semi-structured linear and the copy.
    """

    packed: torch.Tensor | None

    @classmethod
    def holding(cls, linear: nn.Linear, sparse: torch.Tensor) -> SparseLinear:
        """In place: `linear` with the sparse weight; cuSPARSELt's compressed tensor also as a plain buffer,
        which torch.compile reads without looking into the weight's subclass."""
        linear.weight = nn.Parameter(sparse, requires_grad=False)
        linear.__class__ = cls
        packed = sparse.packed if isinstance(sparse, CUSPARSELT) else None
        linear.register_buffer("packed", packed, persistent=False)
        return linear  # type: ignore[return-value]  # its class was just set

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is None:
            return super().forward(x).contiguous()
        rows = x.reshape(-1, x.shape[-1]).contiguous()
        return sparse_linear_2_4(rows, self.packed, self.bias, self.out_features).view(*x.shape[:-1], -1)


_ALGORITHMS: dict[tuple[int, int, int, int], tuple[int, int, int]] = {}
"""cuSPARSELt's searched (algorithm, split-K, split-K mode) per (compressed weight's address, N, K, padded rows)."""
DEFAULT_CONFIG = (0, 1, -1)
"""What `_cslt_sparse_mm` runs when given no choice: algorithm 0, no split-K."""


def search(packed: torch.Tensor, padded: torch.Tensor) -> tuple[int, int, int]:
    """cuSPARSELt's fastest (algorithm, split-K, split-K mode) for W·paddedᵀ with a row-major result.

    `torch._C._cusparselt.mm_search` returns the split-K it found with the algorithm; the older
    `torch._cslt_sparse_mm_search` (deprecated in torch 2.11) drops it, so its algorithm then ran unsplit,
    which is not what was timed in the search. Kept as the fallback where the new call is missing."""
    mm_search = getattr(getattr(torch._C, "_cusparselt", None), "mm_search", None)
    if mm_search is None:
        return int(torch._cslt_sparse_mm_search(packed, padded.t(), transpose_result=True)), *DEFAULT_CONFIG[1:]
    alg_id, split_k, split_k_mode, _ = mm_search(packed, padded.t(), None, None, None, True)
    return int(alg_id), int(split_k), int(split_k_mode)


@torch.library.custom_op("prunereg::sparse_linear_2_4", mutates_args=())
def sparse_linear_2_4(
    x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None, out_features: int
) -> torch.Tensor:
    """x·Wᵀ + b, rows × out_features row-major, in one cuSPARSELt call on the compressed weight W.

    An op of its own so that the tracer records the rows the model gave (M), not the rows padded up to
    cuSPARSELt's minimum tile, and so that torch.compile keeps it whole (fused mode compiles layers). The
    algorithm and its split-K are searched once per shape outside a CUDA Graph capture; a capture that meets
    a new shape runs the default ones.
    """
    key = _key(x, packed, out_features)
    rows, padded_rows = x.shape[0], key[-1]
    padded = x if padded_rows == rows else F.pad(x, (0, 0, 0, padded_rows - rows))
    if key not in _ALGORITHMS and not torch.cuda.is_current_stream_capturing():
        _ALGORITHMS[key] = search(packed, padded)
    alg_id, split_k, split_k_mode = _ALGORITHMS.get(key, DEFAULT_CONFIG)
    out = torch._cslt_sparse_mm(
        packed, padded.t(), transpose_result=True, alg_id=alg_id, split_k=split_k, split_k_mode=split_k_mode
    )[:rows]
    return out if bias is None else out + bias


def _key(x: torch.Tensor, packed: torch.Tensor, out_features: int) -> tuple[int, int, int, int]:
    """(compressed weight's address, N, K, rows padded up to cuSPARSELt's minimum tile)."""
    minimum = CUSPARSELT._DTYPE_SHAPE_CONSTRAINTS[x.dtype].dense_min_rows
    return packed.data_ptr(), out_features, x.shape[1], -(-x.shape[0] // minimum) * minimum


def algorithm(x: torch.Tensor, packed: torch.Tensor, out_features: int) -> str:
    """The cuSPARSELt configuration `sparse_linear_2_4` runs on these rows, "algorithm N", with " split-K S"
    where it splits K in S parts and " segment-K" where it splits K by cuSPARSELt's own choice (split-K -1, Hopper
    only): the searched one, else the default.

    The tracer records it with the GEMM, so a run says which algorithm each 2:4 product ran on."""
    alg_id, split_k, _ = _ALGORITHMS.get(_key(x, packed, out_features), DEFAULT_CONFIG)
    split = " segment-K" if split_k == -1 else f" split-K {split_k}" if split_k > 1 else ""
    return f"algorithm {alg_id}{split}"


@sparse_linear_2_4.register_fake
def _(x, packed, bias, out_features):
    return x.new_empty(x.shape[0], out_features)


class SemiStructured24(Adapter[SemiStructuredParams]):
    name = "semi_structured_2_4"

    def apply(self, model, params: SemiStructuredParams, calibration=None):
        check_calibration(params, calibration)
        if params.selection != "magnitude":
            prune_layerwise(model, params.projections, calibration, *calibrated(params.selection, n_of_m=(2, 4)))
        with torch.no_grad():
            for linear in linears(model, params.projections):
                masked = linear.weight * mask_2_4(linear.weight)  # after a calibrated selection: its own mask
                sparse = to_sparse(masked)
                if sparse is None:
                    linear.weight.copy_(masked)
                else:
                    SparseLinear.holding(linear, sparse)
        return model

    def as_plain_model(self, model):
        """In place: sparse-tensor-core weights back to masked dense ones."""
        for module in model.modules():
            if isinstance(module, nn.Linear) and kernel_of(module) != "masked dense":
                module.weight = nn.Parameter(module.weight.to_dense(), requires_grad=False)
                module._buffers.pop("packed", None)
                module.__class__ = nn.Linear
        return model


ADAPTER = SemiStructured24()
