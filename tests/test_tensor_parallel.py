"""Tensor-parallel mode (harness/tensor_parallel.py) on a CPU: two gloo processes run the embedded model sharded
and produce transformers' logits, dense and at one point of every static family (uneven and empty shards
included), in a full prefill and token by token against the cache; the split is recorded per layer; the cost
model's tensor-parallel terms against numbers computed by hand from Llama-2-70B's public config; and
`prunereg evaluate --tp 2` end to end. One pair of processes serves the whole file (starting one costs seconds)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from prunereg.adapters import get_adapter
from prunereg.evaluate import EvaluationError, evaluate
from prunereg.harness.calibration import calibration_ids
from prunereg.harness.models import load_model
from prunereg.harness.tensor_parallel import (
    Ranks,
    TensorParallelRefusal,
    forward_logits,
    sharding,
    shards,
    split,
)
from prunereg.spec.catalog import Phase, Scenario, devices, models
from prunereg.spec.costmodel import estimate, theoretical_speedup
from prunereg.spec.effects import ResolvedEffect
from prunereg.spec.parameters import (
    DenseParams,
    HiddenSliceParams,
    LayerDropParams,
    LowRankParams,
    SemiStructuredParams,
    SparseAttentionParams,
    SublayerDropParams,
    TokenRoutingParams,
    UnstructuredParams,
    WidthParams,
)
from prunereg.spec.result_checks import RESULT_CHECKS
from prunereg.spec.results import SavedEvaluation
from prunereg.spec.submission import Submission
from prunereg.spec.taxonomy import LAYER_GEMMS, Gemm

SUBMISSIONS = Path(__file__).parent.parent / "submissions"
IDS = torch.randint(4096, (2, 24), generator=torch.Generator().manual_seed(3))
PREFILL = 16
TOLERANCE: dict[str, Any] = {"rtol": 1e-4, "atol": 1e-4}
"""float32 partial sums added in another order than one process adds them."""

POINTS = {
    "dense": ("dense", DenseParams()),
    "layer-drop": ("layer_drop", LayerDropParams(sparsity=0.5, selection="deepest")),
    "attention-drop": (
        "sublayer_drop",
        SublayerDropParams(sparsity=0.5, selection="explicit", layers=[0, 3, 4, 6], sublayer="attention"),
    ),
    "mlp-drop": ("sublayer_drop", SublayerDropParams(sparsity=0.5, selection="deepest", sublayer="mlp")),
    "width-even": ("width", WidthParams(attention_sparsity=0.5, mlp_sparsity=0.25, selection="magnitude")),
    "width-uneven": ("width", WidthParams(attention_sparsity=0.25, mlp_sparsity=0.5, selection="seeded", seed=1)),
    "width-one-group": ("width", WidthParams(attention_sparsity=0.75, mlp_sparsity=0.25, selection="magnitude")),
    "hidden-slice": ("hidden_slice", HiddenSliceParams(sparsity=0.25, selection="magnitude")),
    "slicegpt": (
        "hidden_slice",
        HiddenSliceParams(
            sparsity=0.25, selection="slicegpt", calibration={"dataset": "embedded-train", "sequences": 4, "length": 32}
        ),
    ),
    "low-rank": (
        "low_rank",
        LowRankParams(sparsity=0.5, selection="svd", projections=["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]),
    ),
    "2:4": (
        "semi_structured_2_4",
        SemiStructuredParams(selection="magnitude", projections=["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]),
    ),
    "unstructured": (
        "unstructured",
        UnstructuredParams(
            selection="magnitude", sparsity=0.5, projections=["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]
        ),
    ),
}
"""One point of every static family on prunereg-mini (8 layers, 4 KV groups of 2 query heads, 384 channels)."""


@pytest.fixture(scope="module")
def ranks():
    with Ranks(2) as group:
        yield group


@pytest.fixture(scope="module")
def mini():
    return load_model("prunereg-mini", "cpu", torch.float32)


_PRUNED: dict[str, Any] = {}


def pruned(mini, point: str):
    if point not in _PRUNED:
        name, params = POINTS[point]
        calibration, config = params.calibration_needed(), mini.model.config
        ids = None
        if calibration is not None:
            ids = calibration_ids(calibration, mini.tokenizer, config.vocab_size, config.max_position_embeddings)
        _PRUNED[point] = get_adapter(name).apply(copy.deepcopy(mini.model), params, ids)
    return _PRUNED[point]


def test_split_gives_the_first_ranks_one_more():
    assert split(14, 4) == [4, 4, 3, 3]
    assert split(6, 8) == [1, 1, 1, 1, 1, 1, 0, 0]
    assert split(384, 2) == [192, 192]


@pytest.mark.parametrize("point", list(POINTS))
def test_two_ranks_compute_what_one_process_does(ranks, mini, point):
    """Both ranks return transformers' logits: in one prefill, and in a prefill then one token at a time."""
    model = pruned(mini, point)
    with torch.inference_mode():
        expected = model(IDS, use_cache=False).logits
    per_rank = ranks.run(forward_logits, shards(model, 2, IDS.shape[0], IDS.shape[1]), IDS, PREFILL)
    for whole, stepwise in per_rank:
        torch.testing.assert_close(whole, expected, **TOLERANCE)
        torch.testing.assert_close(stepwise, expected, **TOLERANCE)


def test_the_split_of_every_layer_is_recorded(mini):
    """Dense: 2 KV groups and 192 channels per rank; 3 groups left split 2 and 1; 1 group left leaves a rank none;
    dropped blocks have no split."""
    dense = sharding(mini.model, 2)
    assert {(tuple(la.kv_groups), tuple(la.heads), tuple(la.channels)) for la in dense.layers} == {
        ((2, 2), (4, 4), (192, 192))
    }
    assert dense.uneven == []
    uneven = sharding(pruned(mini, "width-uneven"), 2)
    assert [la.kv_groups for la in uneven.layers] == [[2, 1]] * 8 and uneven.uneven == list(range(8))
    assert [la.heads for la in uneven.layers] == [[4, 2]] * 8
    assert [la.kv_groups for la in sharding(pruned(mini, "width-one-group"), 2).layers] == [[1, 0]] * 8
    dropped = sharding(pruned(mini, "attention-drop"), 2).layers
    assert [i for i, la in enumerate(dropped) if la.kv_groups is None] == [0, 3, 4, 6]
    assert all(la.channels == [192, 192] for la in dropped)
    assert len(sharding(pruned(mini, "layer-drop"), 2).layers) == 4


@pytest.mark.parametrize(
    "name,params",
    [
        ("token_routing", TokenRoutingParams(sparsity=0.5, sublayer="mlp", layers="alternate", policy="seeded")),
        ("sparse_attention", SparseAttentionParams(sparsity=0.5, block_size=16, policy="seeded")),
    ],
)
def test_dynamic_families_are_refused_with_the_reason(mini, name, params):
    model = get_adapter(name).apply(copy.deepcopy(mini.model), params, None)
    with pytest.raises(TensorParallelRefusal, match="not split over ranks"):
        shards(model, 2, 1, 16)


LLAMA_70B = models()["llama-2-70b"]
H200 = devices()["h200"]
PREFILL_4K = Scenario(phase=Phase.prefill, batch_size=1, seq_len=4096)
DECODE_4K = Scenario(phase=Phase.decode, batch_size=1, seq_len=4096)
HIDDEN, INTER, LAYERS, KV_GROUPS, HEAD_DIM = 8192, 28672, 80, 8, 128


def effect(gemm, dimension, granularity, fraction):
    return ResolvedEffect(gemm=gemm, dimension=dimension, mode="static", granularity=granularity, fraction=fraction)


DEPTH_25 = [effect(g, "M", "layer", 0.25) for g in LAYER_GEMMS]
WIDTH_25 = [
    effect(Gemm.qkv_proj, "N", "kv_group", 0.25),
    effect(Gemm.o_proj, "K", "kv_group", 0.25),
    effect(Gemm.gate_up_proj, "N", "channel", 0.25),
    effect(Gemm.down_proj, "K", "channel", 0.25),
]


def test_llama_2_70b_config_and_interconnect():
    assert (LLAMA_70B.hidden_size, LLAMA_70B.intermediate_size, LLAMA_70B.num_hidden_layers) == (HIDDEN, INTER, LAYERS)
    assert (LLAMA_70B.num_attention_heads, LLAMA_70B.num_key_value_heads, LLAMA_70B.head_dim) == (64, 8, 128)
    assert H200.interconnect_bandwidth == devices()["h100"].interconnect_bandwidth == 450e9  # 900 GB/s both ways


def test_all_reduces_by_hand():
    """Two ring all-reduces per layer of the 4096×8192 bf16 output; each GPU sends 2·(4−1)/4 of it."""
    dense = estimate(LLAMA_70B, H200, PREFILL_4K, (), 2, tensor_parallel=4)
    sent = 2 * 80 * (4096 * 8192 * 2) * 2 * 3 / 4
    assert sent == 16_106_127_360
    assert dense.allreduce_bytes == pytest.approx(sent)
    assert dense.communication_s == pytest.approx(sent / 450e9)
    assert dense.time_s == pytest.approx(sum(r.time_s for r in dense.rows) + dense.communication_s)
    dropped = estimate(LLAMA_70B, H200, PREFILL_4K, DEPTH_25, 2, tensor_parallel=4)
    assert dropped.allreduce_bytes == pytest.approx(sent * 0.75)  # dropped layers take their all-reduces along
    assert estimate(LLAMA_70B, H200, PREFILL_4K, WIDTH_25, 2, tensor_parallel=4).allreduce_bytes == pytest.approx(
        sent
    )  # width leaves the hidden size, so every message, as it is


def test_per_gpu_shares_by_hand():
    """Dense over 4 GPUs: 2 of 8 KV groups and 7168 channels each. 25 % width leaves 6 groups: 2, 2, 1, 1
    over 4 GPUs (the largest rank as slow as dense), 3 and 3 over 2 (3/4 of dense)."""
    qkv = 8192 * (64 + 2 * 8) * 128 * 2  # bytes of one layer's q/k/v weights
    for ranks, groups in ((1, 8), (2, 4), (4, 2), (8, 1)):
        row = estimate(LLAMA_70B, H200, DECODE_4K, (), 2, tensor_parallel=ranks).row(Gemm.qkv_proj)
        assert row.weight_bytes == pytest.approx(80 * qkv * groups / 8)
        assert row.n == (64 + 2 * 8) * 128 * groups / 8
    down = estimate(LLAMA_70B, H200, DECODE_4K, (), 2, tensor_parallel=4).row(Gemm.down_proj)
    assert (down.k, down.n, down.weight_bytes) == (7168, 8192, 80 * 7168 * 8192 * 2)
    dense4, width4 = (estimate(LLAMA_70B, H200, DECODE_4K, e, 2, tensor_parallel=4) for e in ((), WIDTH_25))
    assert width4.row(Gemm.qkv_proj).weight_bytes == dense4.row(Gemm.qkv_proj).weight_bytes
    assert width4.row(Gemm.attn_score).kv_bytes == dense4.row(Gemm.attn_score).kv_bytes
    assert width4.row(Gemm.gate_up_proj).n == 2 * 28672 * 0.75 / 4  # 21504 channels left split 5376 each
    dense2, width2 = (estimate(LLAMA_70B, H200, DECODE_4K, e, 2, tensor_parallel=2) for e in ((), WIDTH_25))
    assert width2.row(Gemm.qkv_proj).weight_bytes == pytest.approx(dense2.row(Gemm.qkv_proj).weight_bytes * 0.75)
    assert width2.row(Gemm.o_proj).k == 48 * 128 / 2


def test_one_device_is_unchanged_and_a_device_without_interconnect_is_refused():
    for scenario in (PREFILL_4K, DECODE_4K):
        for effects in ((), DEPTH_25, WIDTH_25):
            one = estimate(LLAMA_70B, H200, scenario, effects, 2, tensor_parallel=1)
            assert one == estimate(LLAMA_70B, H200, scenario, effects, 2)
            assert one.allreduce_bytes == one.communication_s == 0
    with pytest.raises(ValueError, match="no interconnect"):
        estimate(LLAMA_70B, devices()["rtx-pro-6000"], DECODE_4K, (), 2, tensor_parallel=2)
    speedup = theoretical_speedup(LLAMA_70B, H200, DECODE_4K, WIDTH_25, 2, tensor_parallel=4)
    dense, width = (estimate(LLAMA_70B, H200, DECODE_4K, e, 2, tensor_parallel=4).time_s for e in ((), WIDTH_25))
    assert speedup == pytest.approx(dense / width) and speedup < theoretical_speedup(
        LLAMA_70B, H200, DECODE_4K, WIDTH_25, 2
    )  # the uneven KV groups keep the attention of the slowest GPU whole


TINY = (Scenario(phase=Phase.prefill, batch_size=1, seq_len=32), Scenario(phase=Phase.decode, batch_size=2, seq_len=32))


def test_evaluate_tp_2_records_ranks_split_and_roofline():
    """`evaluate --tp 2` on a width point leaving 3 of 4 KV groups: the run says 2 ranks in its fingerprint and
    device name, each point its split, and its theoretical times are the cost model's for 2 GPUs (what ingestion
    checks: the saved file passes every results check)."""
    spec = Submission.model_validate(json.loads((SUBMISSIONS / "wanda-sp.json").read_text()))
    result = evaluate(
        spec, "prunereg-mini", "cpu", TINY, warmup=1, repeats=3, mode="fused", only={"ratio-20"}, tasks=(),
        tensor_parallel=2,
    )  # fmt: skip
    env = result.environment
    assert env.tensor_parallel == 2 and env.device_name.startswith("2× ") and env.execution_mode == "fused"
    (point,) = result.points
    assert point.sharding is not None and point.sharding.tensor_parallel == 2
    assert {tuple(la.kv_groups or ()) for la in point.sharding.layers} == {(2, 1)}
    for latency in point.latency:
        assert latency.execution == "fused" and len(latency.samples) == len(latency.dense_samples or ()) == 3
        expected = estimate(models()["prunereg-mini"], devices()["cpu-generic"], latency.scenario, point.effects, 4, 2)
        assert latency.theoretical == pytest.approx(expected.time_ms)
    saved = SavedEvaluation(submission=spec, result=result)
    assert [p for check in RESULT_CHECKS for p in check(saved)] == []
    assert env.key() != env.model_copy(update={"tensor_parallel": None}).key()
    four = result.model_copy(update={"environment": env.model_copy(update={"tensor_parallel": 4})})
    problems = {p.pointer for check in RESULT_CHECKS for p in check(saved.model_copy(update={"result": four}))}
    assert "/result/points/0/sharding" in problems  # a file claiming 4 ranks for a split over 2
    assert any(pointer.endswith("/theoretical") for pointer in problems)  # priced for 2 GPUs, not 4


def test_tp_needs_fused_mode():
    spec = Submission.model_validate(json.loads((SUBMISSIONS / "dense.json").read_text()))
    with pytest.raises(EvaluationError, match="--tp shards fused mode's forward: use --mode fused"):
        evaluate(spec, "prunereg-mini", "cpu", TINY, mode="eager", tensor_parallel=2)


def test_the_cli_takes_tp_and_refuses_one(tmp_path):
    from prunereg.cli import app

    dense = SUBMISSIONS / "dense.json"
    out = CliRunner().invoke(app, ["evaluate", str(dense), "--tp", "1", "--db", str(tmp_path / "r.db")])
    assert out.exit_code != 0 and "Traceback" not in out.output and "--tp" in out.output
    out = CliRunner().invoke(
        app, ["evaluate", str(dense), "--tp", "2", "--mode", "graph", "--db", str(tmp_path / "r.db")]
    )
    assert out.exit_code == 1 and "error: --tp shards fused mode's forward" in out.output
