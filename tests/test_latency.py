"""The timing paths: eager workloads keep their scenario's shape, static (graph-mode) workloads
compute what eager ones compute and can be replayed, fallbacks are recorded, summaries are the
right order statistics. Graph capture itself runs on CUDA only (the tests marked so)."""

from __future__ import annotations

import copy
import subprocess

import pytest
import torch
from transformers import AttentionInterface, AutoConfig, AutoModelForCausalLM

from prunereg.adapters import get_adapter, sparse_attention
from prunereg.adapters.sparse_attention import block_sparse_attention
from prunereg.harness import latency
from prunereg.harness.fingerprint import git_revision, gpu_state
from prunereg.harness.latency import (
    UNMASKED_BLOCK_SPARSE,
    UNMASKED_SDPA,
    MaskedAttentionTimed,
    StaticWorkload,
    Workload,
    measure_pair,
)
from prunereg.spec.catalog import Phase, Scenario
from prunereg.spec.parameters import LayerDropParams, SparseAttentionParams, WidthParams
from prunereg.spec.results import latency_summary

DECODE = Scenario(phase=Phase.decode, batch_size=3, seq_len=20)
PREFILL = Scenario(phase=Phase.prefill, batch_size=2, seq_len=16)
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA Graph capture needs a CUDA device")


def tiny(device: str = "cpu", dtype=torch.float32):
    config = AutoConfig.for_model(
        "llama",
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, dtype=dtype).to(device).eval()


@pytest.fixture(scope="module")
def model():
    return tiny()


def pruned(model, name, params):
    return get_adapter(name).apply(copy.deepcopy(model), params)


def test_decode_step_keeps_the_context_length(model):
    work = Workload(model, DECODE)
    assert work.cache.get_seq_length() == 20
    for _ in range(4):
        work.step()
        assert work.cache.get_seq_length() == 21
        work.reset()
        assert work.cache.get_seq_length() == 20


def test_prefill_workload_has_the_scenario_shape(model):
    work = Workload(model, PREFILL)
    assert work.prompt.shape == (2, 16) and work.cache is None


def variant_of(model, variant: str):
    return {
        "dense": lambda: model,
        "layer_drop": lambda: pruned(model, "layer_drop", LayerDropParams(sparsity=0.5)),
        "width": lambda: pruned(model, "width", WidthParams(attention_sparsity=0.5, mlp_sparsity=0.5)),
        "block_sparse": lambda: pruned(model, "sparse_attention", SparseAttentionParams(sparsity=0.5, block_size=16)),
    }[variant]()


@pytest.mark.parametrize("variant", ["dense", "layer_drop", "width", "block_sparse"])
@pytest.mark.parametrize("scenario", [DECODE, PREFILL], ids=["decode", "prefill"])
def test_static_workload_computes_what_the_eager_one_does(model, variant, scenario):
    """Same inputs, same logits, on every replay: the static cache is rewound, not filled further."""
    net = variant_of(model, variant)
    expected = Workload(net, scenario).step().logits
    work = StaticWorkload(net, scenario)
    for _ in range(3):
        torch.testing.assert_close(work.step().logits, expected)


@pytest.mark.parametrize(
    ("variant", "unmasked", "attention"),
    [("dense", UNMASKED_SDPA, AttentionInterface._global_mapping["sdpa"]),
     ("block_sparse", UNMASKED_BLOCK_SPARSE, block_sparse_attention)],
)  # fmt: skip
def test_static_workload_runs_attention_unmasked_and_restores_the_config(
    model, monkeypatch, variant, unmasked, attention
):
    """A decode step over the full static cache needs no mask, nor does the prompt filling the empty cache; given
    one, block-sparse attention would take its masked-SDPA path, at dense cost on a GPU too."""
    net, masks = variant_of(model, variant), []
    implementation = net.config._attn_implementation

    def spy(module, query, key, value, attention_mask, **kwargs):
        masks.append(attention_mask)
        return attention(module, query, key, value, attention_mask, **kwargs)

    monkeypatch.setitem(AttentionInterface._global_mapping, unmasked, spy)
    work = StaticWorkload(net, DECODE)
    work.step()
    assert len(masks) == 2 * net.config.num_hidden_layers and all(m is None for m in masks)
    assert net.config._attn_implementation == implementation


def test_a_timing_that_ran_masked_block_sparse_attention_on_a_gpu_is_refused(model, monkeypatch):
    """The count is a GPU's (`sparse_attention.masked_on_gpu`); here the pruned model's forward stands in for it."""
    monkeypatch.setattr(sparse_attention, "masked_on_gpu", 0)  # restored after the test
    net = copy.deepcopy(model)
    net.register_forward_hook(lambda *_: setattr(sparse_attention, "masked_on_gpu", sparse_attention.masked_on_gpu + 1))
    with pytest.raises(MaskedAttentionTimed, match=r"in 5 GPU calls while decode-b3-c20 was timed in eager mode"):
        measure_pair(model, net, DECODE, warmup=1, repeats=3)
    measure_pair(model, model, DECODE, warmup=1, repeats=3)  # nothing counted, nothing refused


def test_measure_pair_returns_one_sample_per_repeat(model):
    timing = measure_pair(model, model, Scenario(phase=Phase.decode, batch_size=1, seq_len=8), warmup=1, repeats=5)
    assert len(timing.dense) == len(timing.pruned) == 5 and all(t > 0 for t in timing.dense + timing.pruned)
    assert (timing.execution, timing.fallback, timing.gpu_before) == ("eager", None, None)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the fallback a capture failure causes off CUDA")
def test_a_failed_capture_falls_back_to_eager_with_the_reason(model):
    timing = measure_pair(model, model, DECODE, warmup=0, repeats=3, mode="graph")
    assert timing.execution == "eager" and len(timing.pruned) == 3
    assert timing.fallback.startswith("graph mode failed on the dense model: RuntimeError:")


def test_gpu_state_is_not_read_off_cuda():
    assert gpu_state(torch.device("cpu")) is None


def test_summary_takes_median_and_20th_80th_percentiles():
    stats = latency_summary([float(x) for x in range(1, 12)])  # 1..11
    assert stats == {"median": 6.0, "p20": 3.0, "p80": 9.0}


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("scenario", [DECODE, PREFILL], ids=["decode", "prefill"])
@pytest.mark.parametrize("variant", ["dense", "layer_drop"])
def test_graph_replay_computes_what_eager_does(variant, scenario):
    """Not block-sparse attention: flex_attention refuses this model's heads of 8 (an H100 said so), and its masked
    fallback cannot be captured; graph-mode MInference on Llama-3.1-8B shapes ran captured (README)."""
    net = variant_of(tiny("cuda"), variant)
    expected = Workload(net, scenario).step().logits
    work = StaticWorkload(net, scenario)
    work.capture()
    for _ in range(3):
        with torch.inference_mode():  # the graph's buffers are inference tensors
            work.output.logits.fill_(float("nan"))
        work.step()
        torch.cuda.synchronize()
        torch.testing.assert_close(work.output.logits, expected, atol=1e-4, rtol=1e-4)  # kernels may differ


@pytest.mark.cuda
@needs_cuda
def test_graph_mode_measures_in_graph_mode_and_reads_the_gpu():
    net = tiny("cuda", torch.bfloat16)
    timing = measure_pair(
        net,
        pruned(net, "width", WidthParams(attention_sparsity=0.5, mlp_sparsity=0.5)),
        DECODE,
        warmup=2,
        repeats=5,
        mode="graph",
    )
    assert (timing.execution, timing.fallback) == ("graph", None)
    pytest.importorskip("pynvml")
    assert timing.gpu_before is not None and timing.gpu_before.sm_clock_mhz > 0


@pytest.mark.cuda
@needs_cuda
def test_graph_mode_times_block_sparse_attention_on_flex_and_refuses_the_masked_path(monkeypatch):
    """Heads of 64 and whole 16-token blocks, which compiled flex_attention takes; with the static cache's mask (graph
    mode before UNMASKED_BLOCK_SPARSE) the timing ran masked SDPA and is refused."""
    config = AutoConfig.for_model(
        "llama", vocab_size=97, hidden_size=256, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=64, max_position_embeddings=512,
    )  # fmt: skip
    torch.manual_seed(0)
    net = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).cuda().eval()
    sparse = pruned(net, "sparse_attention", SparseAttentionParams(sparsity=0.5, block_size=16))
    scenario = Scenario(phase=Phase.decode, batch_size=1, seq_len=256)
    timing = measure_pair(net, sparse, scenario, warmup=1, repeats=3, mode="graph")
    assert (timing.execution, timing.fallback) == ("graph", None)
    monkeypatch.setattr(latency, "UNMASKED", {"sdpa": UNMASKED_SDPA})
    with pytest.raises(MaskedAttentionTimed, match="decode-b1-c256"):
        measure_pair(net, sparse, scenario, warmup=1, repeats=3, mode="graph")


def test_the_recorded_revision_says_when_the_code_that_ran_is_not_the_commit(tmp_path):
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    (tmp_path / "adapter.py").write_text("A = 1\n")
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "one"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    assert git_revision(tmp_path) == head
    (tmp_path / "adapter.py").write_text("A = 2\n")  # what a working tree sent to a GPU machine looks like there
    assert git_revision(tmp_path) == head + "+dirty"
    assert git_revision(tmp_path.parent / "nowhere") is None
