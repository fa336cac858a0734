"""Dynamic NK of attention (block-sparse attention; MInference, sparse-prefill simulations).

Each query block of `block_size` positions attends to a subset of its causal key blocks: the sink
blocks, the local blocks (the diagonal included) and a seeded choice of the others, so that
round((1 - sparsity) * causal_blocks) blocks are kept, never fewer than sink + local
(`SparseAttentionParams.kept_blocks`). A dropped key block removes N of QK^T and K of PV for that
query block. The choice depends only on (seed, layer, query block, key block), so decoding a token
with the KV cache uses the key blocks of its query block and gives the logits of a full forward.

Keys are taken to be positions 0..k-1 and queries the last q of them (transformers' dynamic cache).
The function is registered in transformers' AttentionInterface and the model's attention
implementation is switched to it; the model builds its masks as for SDPA, so padding and sliding
windows still arrive as a mask. On CUDA, compiled flex_attention with a BlockMask skips dropped
blocks; on CPU, as a fallback, or when a padding mask is present, SDPA runs with the token-level
mask: same output, dense cost. `kernel_of(model)` says which one runs.
"""

from __future__ import annotations

import warnings
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import is_in_torch_dispatch_mode
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from prunereg.spec.parameters import SparseAttentionParams

from .base import Adapter

NAME = "prunereg_block_sparse"
FLEX = "block-sparse (flex_attention)"
MASKED = "masked dense (SDPA)"
_flex_failure: str | None = None


@lru_cache(maxsize=4096)
def block_rows(params: SparseAttentionParams, layer: int, first: int, last: int) -> torch.Tensor:
    """bool [last - first + 1, last + 1]: key blocks kept by query blocks first..last of one layer."""
    rows = torch.zeros(last - first + 1, last + 1, dtype=torch.bool)
    for i in range(first, last + 1):
        rows[i - first, params.kept_blocks(i, layer)] = True
    return rows


def token_mask(params: SparseAttentionParams, layer: int, q_len: int, k_len: int, device) -> torch.Tensor:
    """bool [q_len, k_len]: the kept key blocks of each query's block, and causality."""
    size = params.block_size
    q_pos = torch.arange(k_len - q_len, k_len, device=device)[:, None]
    k_pos = torch.arange(k_len, device=device)[None, :]
    first = (k_len - q_len) // size
    rows = block_rows(params, layer, first, (k_len - 1) // size).to(device)
    return rows[q_pos // size - first, k_pos // size] & (k_pos <= q_pos)


def kept_pairs(seq_len: int, params: SparseAttentionParams) -> tuple[int, int]:
    """(query-key pairs a prefill of seq_len tokens computes, causal pairs of dense attention), per head."""
    size, kept = params.block_size, 0
    for i in range((seq_len + size - 1) // size):
        rows = min(size, seq_len - i * size)
        kept += rows * (params.kept_block_count(i) - 1) * size + rows * (rows + 1) // 2
    return kept, seq_len * (seq_len + 1) // 2


def masked_sdpa(query, key, value, mask: torch.Tensor, scaling: float | None) -> torch.Tensor:
    repeat = query.shape[1] // key.shape[1]  # grouped-query attention: query head h reads KV head h // repeat
    key, value = key.repeat_interleave(repeat, dim=1), value.repeat_interleave(repeat, dim=1)
    return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scaling)


@lru_cache(maxsize=1024)
def flex_block_mask(params: SparseAttentionParams, layer: int, q_len: int, k_len: int, device: torch.device):
    from torch.nn.attention.flex_attention import create_block_mask

    size = params.block_size
    first, last = (k_len - q_len) // size, (k_len - 1) // size
    rows = block_rows(params, layer, first, last).to(device)
    offset, first_row, last_row = (torch.tensor(n, device=device) for n in (k_len - q_len, first, last - first))

    def mask_mod(b, h, q_idx, kv_idx):  # tensors, not ints, so a compiled kernel serves every length
        q = q_idx + offset
        row = torch.minimum(q // size - first_row, last_row)
        return rows[row, kv_idx // size] & (kv_idx <= q)

    return create_block_mask(mask_mod, None, None, q_len, k_len, device=device, BLOCK_SIZE=size)


@lru_cache(maxsize=1)
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    # Static shapes (dynamic ones broke CPU decode kernels on torch 2.13): every new length compiles once,
    # and past dynamo's limit it would run unfused and eager, so the limit is raised.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    return torch.compile(flex_attention, dynamic=False)


def flex_sparse(query, key, value, params: SparseAttentionParams, layer: int, scaling, compiled: bool = True):
    """Block-sparse attention that skips dropped blocks (when compiled): [b, h, q, d]."""
    from torch.nn.attention.flex_attention import flex_attention

    q_len, k_len = query.shape[2], key.shape[2]
    block_mask = flex_block_mask(params, layer, q_len, k_len, query.device)
    tile = min(64, params.block_size & -params.block_size)  # kernel tiles must divide the sparse block
    options = {"BLOCK_M": tile, "BLOCK_N": tile} if q_len > 1 else None
    attend = _compiled_flex() if compiled else flex_attention
    return attend(query, key, value, block_mask=block_mask, scale=scaling, enable_gqa=True, kernel_options=options)


def block_sparse_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers attention function: query [b, h, q, d], key/value [b, kv_h, k, d] -> ([b, q, h, d], None)."""
    global _flex_failure
    params, layer = module.block_sparse, module.layer_idx
    out = None
    if query.is_cuda and attention_mask is None and _flex_failure is None:
        try:
            traced = is_in_torch_dispatch_mode()  # a GEMM tracer cannot see inside a compiled kernel
            out = flex_sparse(query, key, value, params, layer, scaling, compiled=not traced)
        except Exception as err:  # noqa: BLE001 - any compiler or kernel failure means the masked fallback
            _flex_failure = f"{type(err).__name__}: {err}"
            warnings.warn(f"flex_attention failed, falling back to {MASKED}: {_flex_failure}", stacklevel=2)
    if out is None:
        mask = token_mask(params, layer, query.shape[2], key.shape[2], query.device)
        if attention_mask is not None:
            given = attention_mask[..., : key.shape[2]]
            mask = given & mask if given.dtype == torch.bool else given.masked_fill(~mask, torch.finfo(given.dtype).min)
        out = masked_sdpa(query, key, value, mask, scaling)
    return out.transpose(1, 2).contiguous(), None


def kernel_of(model) -> str:
    """Which kernel the model's attention runs: flex_attention skips blocks, masked SDPA does not."""
    on_cuda = next(model.parameters()).is_cuda
    return FLEX if on_cuda and _flex_failure is None else MASKED


class SparseAttention(Adapter[SparseAttentionParams]):
    name = "sparse_attention"
    checkpoint_refusal = (
        "block-sparse attention is a function prunereg registers at run time; a checkpoint would load dense attention"
    )

    def apply(self, model, params: SparseAttentionParams, calibration=None):
        AttentionInterface.register(NAME, block_sparse_attention)
        AttentionMaskInterface.register(NAME, sdpa_mask)  # padding and sliding windows arrive as for SDPA
        for layer in model.model.layers:
            layer.self_attn.block_sparse = params
        model.set_attn_implementation(NAME)
        return model


ADAPTER = SparseAttention()
