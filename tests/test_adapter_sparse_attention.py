"""sparse_attention: the block rule, 0 % = dense, cached decoding = full forward, flex = masked SDPA."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from tiny_models import ARCHITECTURES, logits, tiny
from transformers import AutoConfig, AutoModelForCausalLM

from prunereg.adapters import get_adapter
from prunereg.adapters.sparse_attention import (
    FLEX,
    MASKED,
    flex_sparse,
    kept_pairs,
    kernel_of,
    masked_sdpa,
    token_mask,
    written_keys,
)
from prunereg.spec.catalog import models
from prunereg.spec.parameters import SparseAttentionParams

IDS = torch.randint(97, (2, 75), generator=torch.Generator().manual_seed(4))  # 4 blocks of 16 and a part


def apply(model, **params):
    return get_adapter("sparse_attention").apply(model, SparseAttentionParams(block_size=16, **params))


@pytest.mark.parametrize("sparsity,sink,local", [(0.5, 1, 1), (0.75, 2, 1), (0.25, 0, 2), (0.9, 1, 3)])
def test_each_query_block_keeps_the_declared_number_of_key_blocks(sparsity, sink, local):
    params = SparseAttentionParams(sparsity=sparsity, block_size=16, sink_blocks=sink, local_blocks=local, seed=7)
    mask = token_mask(params, layer=3, q_len=40 * 16, k_len=40 * 16, device="cpu")
    blocks = mask.view(40, 16, 40, 16).any(dim=(1, 3))
    for i in range(40):
        kept = set(blocks[i].nonzero().flatten().tolist())
        required = set(range(min(sink, i + 1))) | set(range(max(0, i - local + 1), i + 1))
        assert required <= kept and max(kept) == i
        assert len(kept) == min(i + 1, max(len(required), round((1 - sparsity) * (i + 1))))
    assert not mask.triu(1).any()  # causal
    pairs, causal = kept_pairs(40 * 16, params)
    assert (pairs, causal) == (int(mask.sum()), 640 * 641 // 2)


def test_the_choice_depends_on_seed_and_layer_and_decode_rows_match_prefill_rows():
    params = SparseAttentionParams(sparsity=0.5, block_size=16)
    full = token_mask(params, 0, 320, 320, "cpu")
    assert not torch.equal(full, token_mask(params, 1, 320, 320, "cpu"))
    assert not torch.equal(full, token_mask(params.model_copy(update={"seed": 1}), 0, 320, 320, "cpu"))
    for k_len in (1, 17, 200, 320):
        torch.testing.assert_close(token_mask(params, 0, 1, k_len, "cpu")[0], full[k_len - 1, :k_len])
    assert kept_pairs(320, params.model_copy(update={"sparsity": 0.0})) == (320 * 321 // 2,) * 2


def test_only_the_pruned_copy_runs_the_block_sparse_attention():
    model = tiny("llama")
    sparse = apply(copy.deepcopy(model), sparsity=0.0)
    assert sparse.config._attn_implementation == "prunereg_block_sparse"
    assert model.config._attn_implementation != "prunereg_block_sparse"


@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_sparsity_changes_the_output_only_after_the_first_blocks(model_type):
    model = tiny(model_type)
    sparse = apply(copy.deepcopy(model), sparsity=0.75)
    dense_out, sparse_out = logits(model, IDS), logits(sparse, IDS)
    torch.testing.assert_close(sparse_out[:, :32], dense_out[:, :32], rtol=1e-4, atol=1e-5)  # blocks 0, 1: all kept
    assert not torch.allclose(sparse_out[:, 48:], dense_out[:, 48:], atol=1e-3)


def test_padding_still_masks_keys():
    model = apply(tiny("llama"), sparsity=0.5)
    padding = torch.ones_like(IDS)
    padding[0, -5:] = 0
    with torch.inference_mode():
        padded = model(IDS, attention_mask=padding, use_cache=False).logits
    torch.testing.assert_close(padded[0, :-5], logits(model, IDS[:1, :-5])[0], rtol=1e-4, atol=1e-4)


def test_cpu_runs_the_masked_fallback():
    assert kernel_of(apply(tiny("llama"), sparsity=0.5)) == MASKED


def _flex_equals_masked(device, dtype, tolerance, compiled, head_dim=16, lengths=((128, 128), (1, 77), (1, 128))):
    params = SparseAttentionParams(sparsity=0.5, block_size=16, seed=1)
    generator = torch.Generator().manual_seed(0)
    for q_len, k_len in lengths:
        q = torch.randn(2, 8, q_len, head_dim, generator=generator).to(device, dtype)
        k, v = (torch.randn(2, 4, k_len, head_dim, generator=generator).to(device, dtype) for _ in range(2))
        mask = token_mask(params, 2, q_len, k_len, device)
        expected = masked_sdpa(q, k, v, mask, scaling=0.25)
        got = flex_sparse(q, k, v, params, 2, 0.25, compiled=compiled)
        torch.testing.assert_close(got, expected, rtol=tolerance, atol=tolerance)


def test_flex_block_mask_equals_masked_sdpa_on_cpu_eager():
    """The BlockMask (what compiled flex skips) encodes the same rule as the token mask."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _flex_equals_masked("cpu", torch.float32, 1e-5, compiled=False)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_compiled_flex_equals_masked_sdpa_on_cuda():
    """The shapes the harness runs: head_dim 128, a whole-block prefill and a decode step one key past it.

    (With head_dim 16 and 77 keys, inductor failed to compile the flex kernel on an H200, torch 2.11.)
    """
    _flex_equals_masked("cuda", torch.bfloat16, 2e-2, compiled=True, head_dim=128, lengths=((256, 256), (1, 257)))
    config = AutoConfig.for_model(
        "llama",
        vocab_size=97,
        hidden_size=256,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
        max_position_embeddings=512,
    )
    model = apply(AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).cuda().eval(), sparsity=0.5)
    assert kernel_of(model) == FLEX
    with torch.inference_mode():
        model(torch.randint(97, (2, 256)).cuda(), use_cache=False)
    assert kernel_of(model) == FLEX


def test_block_size_must_leave_more_than_one_block():
    arch = models()["prunereg-mini"]
    assert "single block" in SparseAttentionParams(sparsity=0.5, block_size=512).misfit(arch)
    assert SparseAttentionParams(sparsity=0.5).misfit(arch) is None


def test_the_gemm_tracer_sees_the_kept_pairs_in_both_kernels():
    from prunereg.harness.trace import trace_forward

    params = SparseAttentionParams(sparsity=0.5, block_size=16, seed=2)
    kept, causal = kept_pairs(128, params)
    assert kept < 0.6 * causal
    model = apply(tiny("llama"), sparsity=0.5, seed=2)
    score = next(t for t in trace_forward(model, IDS[:1, :1].repeat(1, 128)) if t.gemm == "attn_score")
    assert (score.kernel, score.effective_flops) == (MASKED, 6 * 2 * 8 * 8 * kept)

    class FlexToy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.unused = torch.nn.Parameter(torch.zeros(1))  # the tracer reads the device from a parameter

        def forward(self, ids, **_):
            x = torch.randn(1, 2, ids.shape[1], 16, generator=torch.Generator().manual_seed(0))
            return flex_sparse(x, x, x, params, 0, None, compiled=False)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        score = next(
            t for t in trace_forward(FlexToy(), torch.zeros(1, 128, dtype=torch.long)) if t.gemm == "attn_score"
        )
    assert (score.kernel, score.effective_flops) == (FLEX, 2 * 16 * 2 * kept)


@pytest.mark.parametrize("as_float", [False, True], ids=["bool", "additive"])
def test_the_empty_slots_of_a_static_cache_are_cut_before_the_block_pattern(as_float):
    """Two queries at positions 3 and 4 of an 8-slot static cache: keys 5-7 are empty, whatever the mask's dtype."""
    allowed = torch.ones(2, 8, dtype=torch.bool).tril(diagonal=3)[None, None]
    mask = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min) if as_float else allowed
    assert written_keys(2, 8, mask) == 5
    assert written_keys(2, 8, None) == 2  # a prompt filling an empty static cache: transformers' upper-left alignment
    assert written_keys(1, 8, None) == 8 and written_keys(8, 8, None) == 8  # decode over a full cache; no cache
