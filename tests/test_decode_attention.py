"""prunereg's split-KV decode attention (harness/decode_attention.py) computes SDPA's one-query attention, alone
and inside fused mode's decode steps. Its kernels run wherever Triton runs them: on a CUDA device (bf16, and
compiled and captured in test_fused.py), and on the CPU in Triton's interpreter, which this file starts in a
subprocess of its own (TRITON_INTERPRET=1 must be set before Triton is imported) so that CI checks the kernels
without a GPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from test_fused import CHUNKS, IDS, PREFILL, check_fused
from tiny_models import ARCHITECTURES, tiny

from prunereg.harness import decode_attention, fused
from prunereg.harness.decode_attention import BLOCK_N, key_splits, split_kv_decode

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
RUNS = decode_attention.runs(torch.empty(1, 1, 1, 16, device=DEVICE))
needs_kernels = pytest.mark.skipif(
    not RUNS,
    reason="Triton cannot run here: a CUDA device, or on a CPU Triton's interpreter "
    "(test_the_kernels_pass_in_tritons_interpreter_on_the_cpu starts it)",
)
DTYPES = [torch.bfloat16] if DEVICE == "cuda" else [torch.float32, torch.float16]
"""bf16 on a GPU; in the interpreter tl.dot is wrong in bf16 (numpy has none), right in float32 and float16."""
SHAPES = [
    pytest.param(1, 32, 8, 128, 4097, 4200, id="llama-3.1-8b-ctx4096"),
    pytest.param(3, 12, 2, 32, 130, 130, id="groups-of-6"),
    pytest.param(2, 4, 4, 64, 1, 8, id="one-key-no-groups"),
    pytest.param(1, 8, 4, 16, 64, 100, id="one-block"),
]
"""(batch, heads, kv_heads, head_dim, keys, cache length): the keys are the first of a longer cache, as fused mode
reads them."""


@needs_kernels
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("batch,heads,kv_heads,head_dim,keys,cache", SHAPES)
def test_split_kv_decode_equals_sdpa(batch, heads, kv_heads, head_dim, keys, cache, dtype):
    generator = torch.Generator().manual_seed(keys)
    q = torch.randn(batch, heads, 1, head_dim, generator=generator).to(DEVICE, dtype)
    k_cache, v_cache = (torch.randn(batch, kv_heads, cache, head_dim, generator=generator) for _ in range(2))
    k, v = (t.to(DEVICE, dtype)[:, :, :keys] for t in (k_cache, v_cache))
    scale = head_dim**-0.5
    out = split_kv_decode(q, k, v, scale)
    expected = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), scale=scale, enable_gqa=True)
    assert out.dtype == dtype and out.shape == q.shape
    bound = 1e-5 if dtype == torch.float32 else 2e-2  # bf16 rounds the probabilities before P·V, as SDPA does
    torch.testing.assert_close(out.float(), expected, atol=bound, rtol=bound)


@needs_kernels
@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_fused_decode_steps_with_split_kv_give_transformers_logits(model_type, monkeypatch):
    """DECODE_ATTENTION "split-kv": every token-by-token step runs the kernel (grouped K/V heads; Mistral's
    window sliced) and the logits are transformers'."""
    calls = []

    def counted(q, k, v, scale):
        calls.append(k.shape[2])
        return split_kv_decode(q, k, v, scale)

    monkeypatch.setattr(fused, "DECODE_ATTENTION", "split-kv")
    monkeypatch.setattr(decode_attention, "split_kv_decode", counted)
    window = {"sliding_window": 16} if model_type == "mistral" else {}
    model = tiny(model_type, num_attention_heads=4, num_key_value_heads=2, head_dim=16, **window)
    check_fused(model.to(DEVICE), IDS.to(DEVICE), PREFILL)
    steps = sum(IDS.shape[1] - PREFILL - chunk + (chunk == 1) for chunk in CHUNKS)  # the one-query calls
    assert len(calls) == steps * model.config.num_hidden_layers
    assert max(calls) == (16 if model_type == "mistral" else IDS.shape[1])


KEY_SPLITS = [
    (1, 8, 4097, (33, 128)),  # 264 programs on 132 SMs, two 64-key blocks each
    (16, 8, 1025, (3, 384)),
    (1, 1, 1, (1, 64)),
    (64, 8, 64, (1, 64)),  # 512 (sequence, K/V head) pairs fill the GPU unsplit
    (1, 2, 100_000, (131, 768)),  # whole blocks: 131 splits of 12 blocks, not 132
]
"""(batch, kv_heads, keys, (splits, keys per split)) on 132 SMs."""


@pytest.mark.parametrize("batch,kv_heads,keys,expected", KEY_SPLITS)
def test_key_splits_cover_every_key_in_whole_blocks_and_fill_the_gpu(batch, kv_heads, keys, expected):
    splits, per_split = key_splits(batch, kv_heads, keys, sms=132)
    assert (splits, per_split) == expected
    assert per_split % BLOCK_N == 0
    assert (splits - 1) * per_split < keys <= splits * per_split  # every key once, no split empty


@pytest.mark.slow
@pytest.mark.skipif(not decode_attention.AVAILABLE, reason="Triton is not installed (it comes with the test extra)")
@pytest.mark.skipif(RUNS, reason="the kernels run here directly (CUDA or already interpreted)")
def test_the_kernels_pass_in_tritons_interpreter_on_the_cpu():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k", "not interpreter"],
        cwd=Path(__file__).parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    summary = run.stdout.strip().splitlines()[-1] if run.stdout.strip() else run.stderr[-2000:]
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    expected = len(DTYPES) * len(SHAPES) + len(ARCHITECTURES) + len(KEY_SPLITS)
    assert summary.startswith(f"{expected} passed"), summary
