"""Dynamic NK of attention (block-sparse attention; MInference, sparse-prefill simulations).

Each query block of `block_size` positions attends to a subset of its causal key blocks: the sink
blocks, the local blocks (the diagonal included) and a choice of the others, so that
round((1 - sparsity) * causal_blocks) blocks are kept, never fewer than sink + local
(`SparseAttentionParams.kept_block_count`). A dropped key block removes N of QK^T and K of PV for that
query block. Two policies choose WHICH blocks; the count, hence the declaration, the cost model and
the FLOPs, is the same for both.

- 'seeded' (the default, a baseline): the choice depends only on (seed, layer, query block), so
  decoding a token with the KV cache uses the key blocks of its query block and gives the logits of
  a full forward.
- 'estimated': MInference's online block-sparse estimate (arXiv 2407.02490; microsoft/MInference
  `_build_block_index`): mean-pooled queries times mean-pooled keys of each key block, the causal key
  blocks of largest score kept; no calibration data. Decisions, with why:
  * Causal: query block i is estimated from the mean query of query block i-1, not of block i.
    MInference, a prefill method, pools block i's own queries; then token t's key blocks depend on
    the queries of t+1.. (the token it predicts included): future information in the held-out
    cross-entropy, and nothing a cached decode can recompute. Block i-1 is in every block-i token's
    past and is still a mean of block_size queries; on the embedded model it did as well as pooling
    block i itself (numbers in the README). Block 0 has one causal block: nothing to choose.
  * Count: sink and local blocks always, then the other causal blocks by score up to the declared
    count (MInference takes a fixed top-k of all causal blocks), so the declaration, cost model and
    FLOPs hold unchanged. Candidates lie before the diagonal: their pooled keys are whole past
    blocks. Ties keep the earlier block.
  * Granularity: per (batch row, query head, layer), as MInference (it pools per head; the query
    heads of one KV group attend differently). Scores are probe . pooled key in float32 (the paper's
    softmax and 1/sqrt(d) keep a row's order); query head j reads KV head j // (heads / kv_heads).
    CPU: a per-(b, h) token mask for SDPA. CUDA: a per-(b, h) BlockMask (flex_attention takes a B and
    an H dimension) built from the block table with BlockMask.from_kv_blocks (run on an H200).
  * The estimate's product runs in a parameterless submodule `router` of the attention module, so
    the GEMM tracer (harness/trace.py) books it as routing cost, not as attention.
  * (a) Held-out cross-entropy: one causal full forward. (b) Prefill: the estimate is paid online,
    a (query blocks x key blocks) product per head, about 1/block_size^2 of attention's FLOPs.
    (c) Decoding: queries are not in the KV cache, so `router` carries the query sum and the row of
    the query block in progress from call to call: a prefill then token-by-token (or chunked)
    decoding keeps the key blocks a full forward chooses, and cached decode equals the full forward.
    A call that does not continue the last one (a cache this module did not fill, as the latency
    harness's static cache) estimates the block in progress from its own first query: causal, but
    not the full forward's choice. (MInference decodes densely; a dense decode would not be what
    the cross-entropy measured.)
  * Left out: MInference's vertical-slash pattern (token columns and diagonals from the last 64
    queries: future for every earlier query, and not key blocks, so not this declaration) and the
    offline per-head choice among its three patterns (that needs a search on calibration data).

Keys are taken to be positions 0..k-1 and queries the last q of them (transformers' dynamic cache; a static
cache's empty slots are cut first, `written_keys`).
The function is registered in transformers' AttentionInterface and the model's attention
implementation is switched to it; the model builds its masks as for SDPA, so padding and sliding
windows still arrive as a mask. On CUDA, compiled flex_attention with a BlockMask skips dropped
blocks (per (batch, head) for 'estimated', built from the block table with BlockMask.from_kv_blocks);
on CPU, as a fallback, or when a padding mask is present, SDPA runs with the token-level mask: same
output, dense cost. `kernel_of(model)` says which one runs.
"""

from __future__ import annotations

import warnings
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import is_in_torch_dispatch_mode
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from prunereg.spec.parameters import SparseAttentionParams

from .base import Adapter

NAME = "prunereg_block_sparse"
FLEX = "block-sparse (flex_attention)"
MASKED = "masked dense (SDPA)"
_flex_failure: str | None = None
masked_on_gpu = 0
"""Masked-SDPA calls on a GPU: steps at dense attention's cost. The latency harness refuses a timing during which this
grew: graph mode's static-cache mask once sent every timed step here while the GEMM trace saw flex_attention, and a
compile that fails only in the timed step would do the same."""


@lru_cache(maxsize=4096)
def block_rows(params: SparseAttentionParams, layer: int, first: int, last: int) -> torch.Tensor:
    """bool [last - first + 1, last + 1]: key blocks kept by query blocks first..last of one layer."""
    rows = torch.zeros(last - first + 1, last + 1, dtype=torch.bool)
    for i in range(first, last + 1):
        rows[i - first, params.kept_blocks(i, layer)] = True
    return rows


def token_mask(params: SparseAttentionParams, layer: int, q_len: int, k_len: int, device) -> torch.Tensor:
    """bool [q_len, k_len]: the seeded key blocks of each query's block, and causality."""
    size, first = params.block_size, (k_len - q_len) // params.block_size
    rows = block_rows(params, layer, first, (k_len - 1) // size).to(device)
    return estimated_token_mask(rows, first, q_len, k_len, size)


@lru_cache(maxsize=1024)
def row_rule(params: SparseAttentionParams, first: int, last: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(bool [rows, last + 1] required key blocks, long [rows] kept counts) of query blocks first..last.

    Cached on the device: a CUDA graph capture may not copy from the host.
    """
    required = torch.zeros(last - first + 1, last + 1, dtype=torch.bool)
    for i in range(first, last + 1):
        required[i - first, sorted(params.required_blocks(i))] = True
    counts = torch.tensor([params.kept_block_count(i) for i in range(first, last + 1)])
    return required.to(device), counts.to(device)


def top_blocks(params: SparseAttentionParams, scores: torch.Tensor, first: int) -> torch.Tensor:
    """bool [b, h, rows, last + 1]: required blocks, then the causal others of largest score up to the count.

    `scores` [b, h, rows, last] rates key blocks 0..last-1 for query blocks first..last.
    """
    last = first + scores.shape[-2] - 1
    required, counts = row_rule(params, first, last, scores.device)
    scores = F.pad(scores, (0, 1), value=float("-inf"))
    causal = (
        torch.arange(last + 1, device=scores.device) <= torch.arange(first, last + 1, device=scores.device)[:, None]
    )
    scores = scores.masked_fill(~causal, float("-inf")).masked_fill(required, float("inf"))
    rank = scores.sort(dim=-1, descending=True, stable=True).indices.argsort(dim=-1)
    return (rank < counts[:, None]) & causal


class PatternEstimate(nn.Module):
    """MInference's block-sparse estimate of one attention module, and what it carries between calls.

    Named `router` on the attention module, so the GEMM tracer books its product as routing cost.
    """

    def __init__(self, params: SparseAttentionParams):
        super().__init__()
        self.params = params
        self.carried: tuple[int, torch.Tensor, int, torch.Tensor] | None = None
        """(end position, query sum [b, h, d] and count of the last query block seen, its row [b, h, blocks])."""

    def forward(self, query: torch.Tensor, key: torch.Tensor) -> tuple[torch.Tensor, int]:
        """(bool [b, h, rows, last + 1]: kept key blocks of query blocks first..last, first)."""
        size, (b, h, q_len, d), k_len = self.params.block_size, query.shape, key.shape[2]
        past = k_len - q_len
        first, last, shift = past // size, (k_len - 1) // size, past % size
        carried = self.carried
        if carried is None or past == 0 or carried[0] != past or carried[1].shape != (b, h, d):
            carried = None
        tail = (last + 1) * size - k_len
        sums = F.pad(query, (0, 0, shift, tail)).view(b, h, -1, size, d).sum(dim=3, dtype=torch.float32)
        counts = [size] * (last - first + 1)
        counts[0] -= shift
        counts[-1] -= tail
        if carried is not None and shift:
            sums[:, :, 0] += carried[1]
            counts[0] += carried[2]
        if carried is not None and shift and first == last:
            rows = carried[3][:, :, None]  # decoding inside a block: its row was chosen when it began
        else:
            rows = self.estimate(query, key, sums, counts, carried, first)
        self.carried = (k_len, sums[:, :, -1].clone(), counts[-1], rows[:, :, -1].clone())  # not the whole table
        return rows, first

    def estimate(self, query, key, sums, counts, carried, first: int) -> torch.Tensor:
        """Probe of query block i: the mean query of block i - 1 (the carried sum, or the call's first query)."""
        size, (b, h, _, d), kv_heads = self.params.block_size, query.shape, key.shape[1]
        last = first + len(counts) - 1
        divisors = torch.full((len(counts), 1), float(size), device=sums.device)
        divisors[0], divisors[-1] = counts[0], counts[-1]
        pooled = sums / divisors
        if carried is not None and not (key.shape[2] - query.shape[2]) % size:
            before = (carried[1] / carried[2])[:, :, None]
        else:
            before = query[:, :, :1].float()
        probes = torch.cat([before, pooled[:, :, :-1]], dim=2).view(b, kv_heads, -1, d)
        keys = key[:, :, : last * size].reshape(b, kv_heads, last, size, d).sum(dim=3, dtype=torch.float32) / size
        scores = torch.matmul(probes, keys.transpose(-1, -2))  # query head j scores KV head j // group
        scores = scores.view(b, h, len(counts), last)
        rows = top_blocks(self.params, scores, first)
        if carried is not None and (key.shape[2] - query.shape[2]) % size:
            rows[:, :, 0, : first + 1] = carried[3]  # the block in progress keeps the row it began with
        return rows


def estimated_token_mask(rows: torch.Tensor, first: int, q_len: int, k_len: int, size: int) -> torch.Tensor:
    """bool [..., q_len, k_len]: the key blocks a block table [..., rows, key blocks] keeps for each query's
    block (rows from query block `first` on), and causality; [b, h, ...] for 'estimated', bare for 'seeded'."""
    q_pos = torch.arange(k_len - q_len, k_len, device=rows.device)[:, None]
    k_pos = torch.arange(k_len, device=rows.device)[None, :]
    return rows[..., q_pos // size - first, k_pos // size] & (k_pos <= q_pos)


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


def _block_lists(blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int32 counts, int32 indices with the kept blocks first, in order) of a bool [..., kv_blocks] table."""
    order = torch.argsort((~blocks).to(torch.int8), dim=-1, stable=True)
    return blocks.sum(dim=-1, dtype=torch.int32), order.to(torch.int32)


def estimated_block_mask(rows: torch.Tensor, first: int, q_len: int, k_len: int, size: int):
    """A per-(batch, head) BlockMask of an estimated table: a kernel query tile of `size` rows visits the
    kept key blocks of the query blocks it spans; a key block wholly before its first query and kept by
    all of them is full, the others partial (the mask_mod decides per query and key)."""
    from torch.nn.attention.flex_attention import BlockMask

    device, past = rows.device, k_len - q_len
    start = past + torch.arange(0, q_len, size, device=device)
    low, high = start // size - first, (torch.clamp(start + size, max=k_len) - 1) // size - first
    both = rows[:, :, low] & rows[:, :, high]
    before = (torch.arange(rows.shape[-1], device=device) + 1) * size - 1 <= start[:, None]
    full = both & before
    partial = (rows[:, :, low] | rows[:, :, high]) & ~full
    offset, first_row, last_row = (torch.full((), n, device=device) for n in (past, first, rows.shape[2] - 1))

    def mask_mod(b, h, q_idx, kv_idx):
        q = q_idx + offset
        row = torch.minimum(q // size - first_row, last_row)
        return rows[b, h, row, kv_idx // size] & (kv_idx <= q)

    return BlockMask.from_kv_blocks(
        *_block_lists(partial), *_block_lists(full), BLOCK_SIZE=size, mask_mod=mask_mod, seq_lengths=(q_len, k_len)
    )


@lru_cache(maxsize=1)
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    # Static shapes (dynamic ones broke CPU decode kernels on torch 2.13): every new length compiles once,
    # and past dynamo's limit it would run unfused and eager, so the limit is raised.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    return torch.compile(flex_attention, dynamic=False)


def flex_sparse(query, key, value, params: SparseAttentionParams, layer: int, scaling, compiled: bool = True):
    """Block-sparse attention (seeded policy) that skips dropped blocks (when compiled): [b, h, q, d]."""
    block_mask = flex_block_mask(params, layer, query.shape[2], key.shape[2], query.device)
    return run_flex(query, key, value, block_mask, params.block_size, scaling, compiled)


def run_flex(query, key, value, block_mask, size: int, scaling, compiled: bool = True):
    from torch.nn.attention.flex_attention import flex_attention

    # Kernel tiles must divide the sparse block, in a step of one query too: a per-head mask ('estimated') runs flex's
    # main kernel there, not its decoding kernel, and the main kernel's default 128-row tile divides no 16-token block.
    tile = min(64, size & -size)
    rows = tile if query.shape[2] > 1 else min(16, tile)
    options = {"BLOCK_M": rows, "BLOCK_N": tile}
    attend = _compiled_flex() if compiled else flex_attention
    return attend(query, key, value, block_mask=block_mask, scale=scaling, enable_gqa=True, kernel_options=options)


def block_sparse_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers attention function: query [b, h, q, d], key/value [b, kv_h, k, d] -> ([b, q, h, d], None)."""
    global _flex_failure, masked_on_gpu
    params, layer = module.block_sparse, module.layer_idx
    end = written_keys(query.shape[2], key.shape[2], attention_mask)
    key, value = key[:, :, :end], value[:, :, :end]
    attention_mask = None if attention_mask is None else attention_mask[..., :end]
    q_len, k_len, size = query.shape[2], key.shape[2], params.block_size
    rows, first = module.router(query, key) if params.policy == "estimated" else (None, 0)
    out = None
    if query.is_cuda and attention_mask is None and _flex_failure is None:
        try:
            traced = is_in_torch_dispatch_mode()  # a GEMM tracer cannot see inside a compiled kernel
            if rows is None:
                out = flex_sparse(query, key, value, params, layer, scaling, compiled=not traced)
            else:
                block_mask = estimated_block_mask(rows, first, q_len, k_len, size)
                out = run_flex(query, key, value, block_mask, size, scaling, compiled=not traced)
        except Exception as err:  # noqa: BLE001 - any compiler or kernel failure means the masked fallback
            _flex_failure = f"{type(err).__name__}: {err}"
            warnings.warn(f"flex_attention failed, falling back to {MASKED}: {_flex_failure}", stacklevel=2)
    if out is None:
        masked_on_gpu += query.is_cuda
        if rows is None:
            mask = token_mask(params, layer, q_len, k_len, query.device)
        else:
            mask = estimated_token_mask(rows, first, q_len, k_len, size)
        if attention_mask is not None:
            given = attention_mask[..., :k_len]
            mask = given & mask if given.dtype == torch.bool else given.masked_fill(~mask, torch.finfo(given.dtype).min)
        out = masked_sdpa(query, key, value, mask, scaling)
    return out.transpose(1, 2).contiguous(), None


def written_keys(q_len: int, k_len: int, mask: torch.Tensor | None) -> int:
    """How many keys hold tokens. A static cache is longer than what is written to it, and the block pattern takes
    the queries to be the last of the keys, so its empty slots must go. Unmasked with 1 < q < k, transformers
    relies on SDPA's upper-left causal alignment: a prompt filling an empty static cache (`q_offset` 0 in
    masking_utils._ignore_causal_mask_sdpa). Masked, the last query's last allowed key is the last one written."""
    if mask is None:
        return q_len if 1 < q_len < k_len else k_len
    allowed = (mask if mask.dtype == torch.bool else mask == 0)[..., -1, :k_len].nonzero()
    return int(allowed[:, -1].max()) + 1 if allowed.numel() else k_len


def flex_failure() -> str | None:
    """Why flex_attention failed in this process, if it did (the masked path runs from then on)."""
    return _flex_failure


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
            if params.policy == "estimated":
                layer.self_attn.router = PatternEstimate(params)
        model.set_attn_implementation(NAME)
        return model


ADAPTER = SparseAttention()
