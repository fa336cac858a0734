"""The roofline cost model against numbers computed by hand from Llama-3.1-8B's public config."""

import pytest

from prunereg.spec.catalog import Phase, Scenario, devices, models
from prunereg.spec.costmodel import attention_heads_kept, estimate, theoretical_speedup
from prunereg.spec.effects import ResolvedEffect
from prunereg.spec.taxonomy import LAYER_GEMMS, Gemm

LLAMA = models()["llama-3.1-8b"]
H200 = devices()["h200"]
DECODE = Scenario(phase=Phase.decode, batch_size=1, seq_len=4096)
PREFILL = Scenario(phase=Phase.prefill, batch_size=1, seq_len=4096)
PROJECTIONS = (Gemm.qkv_proj, Gemm.o_proj, Gemm.gate_up_proj, Gemm.down_proj)

HIDDEN, INTER, LAYERS, HEADS, KV_HEADS, HEAD_DIM, VOCAB = 4096, 14336, 32, 32, 8, 128, 128256
LAYER_PARAMS = HIDDEN * (HEADS + 2 * KV_HEADS) * HEAD_DIM + HIDDEN * HIDDEN + 3 * HIDDEN * INTER
WEIGHT_BYTES = LAYERS * LAYER_PARAMS * 2
LM_HEAD_BYTES = HIDDEN * VOCAB * 2
KV_BYTES = LAYERS * 2 * 4096 * KV_HEADS * HEAD_DIM * 2


def effect(gemm, dimension, granularity, fraction, mode="static"):
    return ResolvedEffect(gemm=gemm, dimension=dimension, mode=mode, granularity=granularity, fraction=fraction)


DEPTH_HALF = [effect(g, "M", "layer", 0.5) for g in LAYER_GEMMS]
WIDTH_HALF = [
    effect(Gemm.qkv_proj, "N", "kv_group", 0.5),
    effect(Gemm.o_proj, "K", "kv_group", 0.5),
    effect(Gemm.gate_up_proj, "N", "channel", 0.5),
    effect(Gemm.down_proj, "K", "channel", 0.5),
]


def test_catalog_matches_the_public_config():
    assert (LLAMA.hidden_size, LLAMA.intermediate_size, LLAMA.num_hidden_layers) == (HIDDEN, INTER, LAYERS)
    assert (LLAMA.num_attention_heads, LLAMA.num_key_value_heads, LLAMA.head_dim, LLAMA.vocab_size) == (
        HEADS,
        KV_HEADS,
        HEAD_DIM,
        VOCAB,
    )
    assert LAYERS * LAYER_PARAMS == pytest.approx(6.98e9, rel=1e-3)


def test_dense_decode_floor_is_weights_plus_kv_cache():
    est = estimate(LLAMA, H200, DECODE)
    expected = WEIGHT_BYTES + LM_HEAD_BYTES + KV_BYTES
    assert expected == pytest.approx(15.55e9, rel=1e-3)
    assert est.weight_bytes == WEIGHT_BYTES + LM_HEAD_BYTES
    assert est.kv_bytes == KV_BYTES
    assert est.bytes == pytest.approx(expected, rel=1e-3)  # activations add ~0.03 %
    assert est.time_ms == pytest.approx(expected / 4.25e12 * 1e3, rel=1e-3)
    assert est.time_ms == pytest.approx(3.7, rel=0.02)
    assert est.bound == "memory" and all(r.bound == "memory" for r in est.rows)


def test_dense_prefill_floor_is_62_tflop():
    est = estimate(LLAMA, H200, PREFILL)
    s = 4096
    layer_gemms = 2 * s * LAYERS * LAYER_PARAMS
    attention = LAYERS * HEADS * 2 * (2 * s * s * HEAD_DIM) / 2  # QK^T and PV, causal half
    lm_head = 2 * 1 * HIDDEN * VOCAB  # last token only
    assert est.flops == pytest.approx(layer_gemms + attention + lm_head, rel=1e-9)
    assert est.flops == pytest.approx(62e12, rel=0.01)
    assert est.row(Gemm.lm_head).m == 1
    assert est.time_ms == pytest.approx(80.0, rel=0.01)
    assert est.bound == "compute"
    assert all(est.row(g).bound == "compute" for g in LAYER_GEMMS)
    assert est.row(Gemm.lm_head).bound == "memory"


def test_prefill_batch_scales_tokens_and_attention():
    one, four = (estimate(LLAMA, H200, Scenario(phase=Phase.prefill, batch_size=b, seq_len=1024)) for b in (1, 4))
    assert four.row(Gemm.qkv_proj).flops == 4 * one.row(Gemm.qkv_proj).flops
    assert four.row(Gemm.attn_score).flops == 4 * one.row(Gemm.attn_score).flops
    assert four.row(Gemm.lm_head).m == 4


def test_dropping_half_the_layers_keeps_lm_head():
    pruned = estimate(LLAMA, H200, DECODE, DEPTH_HALF)
    assert pruned.row(Gemm.qkv_proj).count == 16
    assert pruned.kv_bytes == KV_BYTES / 2
    expected = (WEIGHT_BYTES + LM_HEAD_BYTES + KV_BYTES) / ((WEIGHT_BYTES + KV_BYTES) / 2 + LM_HEAD_BYTES)
    speedup = theoretical_speedup(LLAMA, H200, DECODE, DEPTH_HALF)
    assert speedup == pytest.approx(expected, rel=2e-3)
    assert 1.85 < speedup < 1.9


def test_half_width_halves_weights_and_kv_cache():
    pruned = estimate(LLAMA, H200, DECODE, WIDTH_HALF)
    assert pruned.weight_bytes == WEIGHT_BYTES / 2 + LM_HEAD_BYTES
    assert pruned.kv_bytes == KV_BYTES / 2
    assert pruned.row(Gemm.qkv_proj).n == (HEADS + 2 * KV_HEADS) * HEAD_DIM / 2
    assert pruned.row(Gemm.attn_score).count == LAYERS * HEADS / 2
    expected = (WEIGHT_BYTES + LM_HEAD_BYTES + KV_BYTES) / ((WEIGHT_BYTES + KV_BYTES) / 2 + LM_HEAD_BYTES)
    speedup = theoretical_speedup(LLAMA, H200, DECODE, WIDTH_HALF)
    assert speedup == pytest.approx(expected, rel=2e-3)
    assert speedup == pytest.approx(1.9, abs=0.05)


def test_head_granularity_keeps_the_kv_cache():
    heads = [effect(Gemm.qkv_proj, "N", "head", 0.5), effect(Gemm.o_proj, "K", "head", 0.5)]
    assert attention_heads_kept(heads) == (0.5, 1.0)
    pruned = estimate(LLAMA, H200, DECODE, heads)
    assert pruned.kv_bytes == KV_BYTES
    assert pruned.row(Gemm.qkv_proj).n == (HEADS / 2 + 2 * KV_HEADS) * HEAD_DIM
    assert pruned.row(Gemm.o_proj).k == HEADS * HEAD_DIM / 2


def test_dynamic_depth_reads_all_weights_in_decode():
    routed = [effect(g, "M", "token", 0.5, mode="dynamic") for g in LAYER_GEMMS]
    pruned = estimate(LLAMA, H200, DECODE, routed)
    assert pruned.weight_bytes == WEIGHT_BYTES + LM_HEAD_BYTES
    assert pruned.kv_bytes == KV_BYTES
    assert pruned.row(Gemm.gate_up_proj).m == 0.5
    assert 1.0 < theoretical_speedup(LLAMA, H200, DECODE, routed) < 1.01
    dense_prefill = estimate(LLAMA, H200, PREFILL)
    assert estimate(LLAMA, H200, PREFILL, routed).flops == pytest.approx(
        dense_prefill.flops / 2 + dense_prefill.row(Gemm.lm_head).flops / 2, rel=1e-9
    )


def test_unstructured_reduces_theoretical_flops_only():
    sparse = [effect(g, "K", "weight", 0.5) for g in PROJECTIONS]
    dense, pruned = estimate(LLAMA, H200, PREFILL), estimate(LLAMA, H200, PREFILL, sparse)
    assert pruned.time_s == dense.time_s and pruned.flops == dense.flops and pruned.bytes == dense.bytes
    assert pruned.theoretical_flops == pytest.approx(dense.flops - 2 * 4096 * LAYERS * LAYER_PARAMS / 2, rel=1e-9)
    assert theoretical_speedup(LLAMA, H200, PREFILL, sparse) == 1.0


def test_2_4_halves_flops_and_stores_metadata():
    sparse = [effect(g, "K", "2:4", 0.5) for g in PROJECTIONS]
    pruned = estimate(LLAMA, H200, DECODE, sparse)
    assert pruned.weight_bytes == pytest.approx(WEIGHT_BYTES * 0.5 * (1 + 1 / 8) + LM_HEAD_BYTES, rel=1e-12)
    prefill = estimate(LLAMA, H200, PREFILL, sparse).row(Gemm.gate_up_proj)
    assert prefill.flops == estimate(LLAMA, H200, PREFILL).row(Gemm.gate_up_proj).flops / 2


def test_low_rank_and_key_blocks():
    rank = estimate(LLAMA, H200, DECODE, [effect(Gemm.down_proj, "K", "rank", 0.6)])
    assert rank.row(Gemm.down_proj).weight_bytes == pytest.approx(LAYERS * 0.4 * INTER * HIDDEN * 2)
    blocks = [
        effect(Gemm.attn_score, "N", "key_block", 0.75, "dynamic"),
        effect(Gemm.attn_value, "K", "key_block", 0.75, "dynamic"),
    ]
    sparse_attn, dense = estimate(LLAMA, H200, PREFILL, blocks), estimate(LLAMA, H200, PREFILL)
    assert sparse_attn.row(Gemm.attn_score).flops == dense.row(Gemm.attn_score).flops / 4
    assert estimate(LLAMA, H200, DECODE, blocks).kv_bytes == KV_BYTES / 4


def test_float32_doubles_bytes():
    assert estimate(LLAMA, H200, DECODE, dtype_bytes=4).bytes == 2 * estimate(LLAMA, H200, DECODE).bytes
    with pytest.raises(ValueError):
        estimate(LLAMA, H200, DECODE, dtype_bytes=0)


def test_routing_pays_for_its_router_and_gather_scatter():
    """Per layer: read every token's hidden state for the router, gather and scatter the kept half."""
    mlp = [effect(g, "M", "token", 0.5, mode="dynamic") for g in (Gemm.gate_up_proj, Gemm.down_proj)]
    routed = estimate(LLAMA, H200, PREFILL, mlp)
    tokens, hidden = 4096, 4096
    per_layer = max(
        2 * tokens * hidden / H200.matmul_flops, (tokens + 4 * tokens * 0.5) * hidden * 2 / H200.memory_bandwidth
    )
    assert routed.routing_s == pytest.approx(32 * per_layer)
    assert routed.time_s == pytest.approx(routed.routing_s + sum(r.time_s for r in routed.rows))
    assert estimate(LLAMA, H200, PREFILL).routing_s == 0.0


def test_shortcut_rotations_are_priced_only_where_declared():
    """SliceGPT's per-block variant runs two kept x kept GEMMs per layer that the single rotation does not."""
    sliced = [effect(g, d, "hidden", 0.25) for g, d in [(Gemm.qkv_proj, "K"), (Gemm.o_proj, "N"), (Gemm.lm_head, "K")]]
    shortcuts = sliced + [effect(Gemm.shortcut_rotation, d, "hidden", 0.25) for d in ("K", "N")]
    for effects in ((), sliced):
        assert estimate(LLAMA, H200, PREFILL, effects).row(Gemm.shortcut_rotation).time_s == 0
    row = estimate(LLAMA, H200, PREFILL, shortcuts).row(Gemm.shortcut_rotation)
    assert (row.count, row.m, row.k, row.n) == (2 * LAYERS, 4096, 0.75 * HIDDEN, 0.75 * HIDDEN)
    assert row.flops == 2 * LAYERS * 2 * 4096 * (0.75 * HIDDEN) ** 2
    for scenario in (PREFILL, DECODE):
        assert theoretical_speedup(LLAMA, H200, scenario, shortcuts) < theoretical_speedup(
            LLAMA, H200, scenario, sliced
        )
