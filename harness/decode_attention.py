"""A split-KV one-query attention (flash-decoding) for fused mode's decode step, in Triton.

A decode step's attention reads the whole KV cache for one query per sequence. SDPA's kernels give one
thread block a (sequence, head) pair, so Llama-3.1-8B's 32 heads at batch 1 leave most of an H100's 132
SMs idle and the cache is read at about a third of the bandwidth (benchmarks/fidelity.py's profile:
0.48 ms a step against a 0.18 ms floor). Serving engines split the keys among thread blocks instead and
merge the partial softmaxes; this module does that, in two kernels:

- `_split_kv_attention_partials`: one program per (sequence, K/V head, key split). It loads the query heads that share
  the K/V head (grouped-query attention reads each key once for the whole group), walks its keys in
  blocks with the online softmax, and writes the split's normalized output and log-sum-exp (fp32);
- `_split_kv_attention_merge`: one program per (sequence, query head), which weighs the splits' outputs by their
  softmax mass, exp(lse_split - lse_total).

It runs as the custom op `prunereg::split_kv_decode`, opaque to torch.compile (the compiled layer calls
it like SDPA) and captured in CUDA Graphs like any kernel launch. Where Triton is not installed it is
not registered (`AVAILABLE`), and fused mode keeps SDPA. With TRITON_INTERPRET=1 set before Triton is
imported, the same kernels run on the CPU, which is how CI checks them.

It is not fused mode's default: on an H100 (benchmarks/flex_decoding.py, results/h100-flex/) one call over
Llama-3.1-8B's 4097-key cache took 9.2 µs against SDPA's 10.5 µs, the step's attention 0.39 ms against 0.47 ms, and
the replayed decode step 6.61 ms against 6.62 ms.
"""

from __future__ import annotations

import functools
import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # a CPU install without Triton: fused mode uses SDPA
    triton = None

AVAILABLE = triton is not None
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
"""Triton's interpreter runs the kernels on CPU tensors (numpy underneath; tl.dot is wrong there in bf16,
right in float32 and float16)."""
BLOCK_N = 64
"""Keys per block of the online softmax."""
PROGRAMS_PER_SM = 2
"""How many (sequence, K/V head, split) programs to aim for per SM: enough splits to fill the GPU, no more,
since every split costs a partial output written and merged."""
NUM_WARPS = 4

if AVAILABLE:

    @triton.jit
    def _split_kv_attention_partials(
        q_ptr, k_ptr, v_ptr, out_ptr, lse_ptr, scale, keys, keys_per_split,
        q_batch, q_head, k_batch, k_head, k_key, v_batch, v_head, v_key,
        KV_HEADS: tl.constexpr, GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, HEAD_DIM: tl.constexpr,
        BLOCK: tl.constexpr, PRECISION: tl.constexpr,
    ):  # fmt: skip
        sequence_head, split, splits = tl.program_id(0), tl.program_id(1), tl.num_programs(1)
        sequence, kv_head = sequence_head // KV_HEADS, sequence_head % KV_HEADS
        g, d = tl.arange(0, GROUP_PAD), tl.arange(0, HEAD_DIM)
        heads = kv_head * GROUP + g
        in_group = g < GROUP
        q = tl.load(
            q_ptr + sequence * q_batch + heads[:, None] * q_head + d[None, :], mask=in_group[:, None], other=0.0
        )
        k_base = k_ptr + sequence * k_batch + kv_head * k_head
        v_base = v_ptr + sequence * v_batch + kv_head * v_head
        start = split * keys_per_split
        end = tl.minimum(start + keys_per_split, keys)
        running_max = tl.full([GROUP_PAD], float("-inf"), tl.float32)
        mass = tl.zeros([GROUP_PAD], tl.float32)
        acc = tl.zeros([GROUP_PAD, HEAD_DIM], tl.float32)
        for first in range(start, end, BLOCK):
            n = first + tl.arange(0, BLOCK)
            valid = n < end
            k = tl.load(k_base + n[:, None] * k_key + d[None, :], mask=valid[:, None], other=0.0)
            scores = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale
            scores = tl.where(valid[None, :], scores, float("-inf"))
            new_max = tl.maximum(running_max, tl.max(scores, 1))
            p = tl.exp(scores - new_max[:, None])
            kept = tl.exp(running_max - new_max)
            mass = mass * kept + tl.sum(p, 1)
            v = tl.load(v_base + n[:, None] * v_key + d[None, :], mask=valid[:, None], other=0.0)
            acc = acc * kept[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
            running_max = new_max
        rows = (sequence * KV_HEADS * GROUP + heads) * splits + split
        tl.store(out_ptr + rows[:, None] * HEAD_DIM + d[None, :], acc / mass[:, None], mask=in_group[:, None])
        tl.store(lse_ptr + rows, running_max + tl.log(mass), mask=in_group)

    @triton.jit
    def _split_kv_attention_merge(
        out_ptr, lse_ptr, merged_ptr, splits, HEAD_DIM: tl.constexpr, SPLITS_PAD: tl.constexpr
    ):
        row = tl.program_id(0)
        s, d = tl.arange(0, SPLITS_PAD), tl.arange(0, HEAD_DIM)
        lse = tl.load(lse_ptr + row * splits + s, mask=s < splits, other=float("-inf"))
        weight = tl.exp(lse - tl.max(lse, 0))
        weight = weight / tl.sum(weight, 0)
        partial = tl.load(
            out_ptr + (row * splits + s[:, None]) * HEAD_DIM + d[None, :], mask=(s < splits)[:, None], other=0.0
        )
        merged = tl.sum(partial * weight[:, None], 0)
        tl.store(merged_ptr + row * HEAD_DIM + d, merged.to(merged_ptr.dtype.element_ty))


def runs(q: torch.Tensor) -> bool:
    """Whether the kernels can run this query: Triton where its tensors are, a head size tl.dot and tl.arange take."""
    head_dim = q.shape[-1]
    return AVAILABLE and (q.is_cuda or INTERPRETED) and head_dim >= 16 and head_dim & (head_dim - 1) == 0


@functools.cache
def _sms(device: torch.device) -> int:
    """The device's SM count; in the interpreter, an H100's."""
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 132


def key_splits(batch: int, kv_heads: int, keys: int, sms: int) -> tuple[int, int]:
    """(splits, keys per split): about PROGRAMS_PER_SM programs per SM, each a whole number of blocks, none empty."""
    blocks = _cdiv(keys, BLOCK_N)
    splits = max(1, min(blocks, _cdiv(PROGRAMS_PER_SM * sms, batch * kv_heads)))
    keys_per_split = _cdiv(blocks, splits) * BLOCK_N
    return _cdiv(keys, keys_per_split), keys_per_split


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


@torch.library.custom_op("prunereg::split_kv_decode", mutates_args=())
def split_kv_decode(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """softmax(q·kᵀ·scale)·v for q [batch, heads, 1, head_dim] over k, v [batch, kv_heads, keys, head_dim]
    (heads a multiple of kv_heads; the cache may be a slice of a longer one: only the last dim must be dense)."""
    batch, heads, _, head_dim = q.shape
    kv_heads, keys = k.shape[1], k.shape[2]
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    group = heads // kv_heads
    splits, keys_per_split = key_splits(batch, kv_heads, keys, _sms(q.device))
    partial = torch.empty(batch * heads * splits, head_dim, device=q.device, dtype=torch.float32)
    lse = torch.empty(batch * heads * splits, device=q.device, dtype=torch.float32)
    out = torch.empty(batch, heads, 1, head_dim, device=q.device, dtype=q.dtype)
    # On a GPU tl.dot rounds float32 operands to TF32 unless told "ieee" (on an H100 the float32 fused tests then
    # missed transformers' logits by 2e-4); bf16 operands are unaffected by the option and keep the default.
    precision = "ieee" if q.dtype == torch.float32 else "tf32"
    _split_kv_attention_partials[(batch * kv_heads, splits)](
        q, k, v, partial, lse, scale, keys, keys_per_split,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), k.stride(2), v.stride(0), v.stride(1), v.stride(2),
        KV_HEADS=kv_heads, GROUP=group, GROUP_PAD=max(16, triton.next_power_of_2(group)), HEAD_DIM=head_dim,
        BLOCK=BLOCK_N, PRECISION=precision, num_warps=NUM_WARPS,
    )  # fmt: skip
    _split_kv_attention_merge[(batch * heads,)](
        partial, lse, out, splits, HEAD_DIM=head_dim, SPLITS_PAD=triton.next_power_of_2(splits)
    )
    return out


@split_kv_decode.register_fake
def _(q, k, v, scale):
    return q.new_empty(q.shape)  # contiguous, as the kernel writes it (q itself comes transposed)
