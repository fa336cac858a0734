"""Fused mode (harness/fused.py): prunereg's own forward computes what transformers computes, for the
embedded model and every adapter's examples on tiny Llama, Qwen2 and Mistral models, in a full prefill
and token by token against its static cache; models it cannot run are refused with the reason, and the
harness times those in graph mode (eager on a CPU, where graph capture fails too). CPU, float32,
uncompiled; capture and compile run on CUDA only (the tests marked so)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from test_adapter_contract import EXAMPLES, pruned
from tiny_models import ARCHITECTURES, tiny

from prunereg.adapters import get_adapter
from prunereg.adapters.low_rank import LowRankLinear
from prunereg.harness.fused import CAPTURE_REFUSAL, FusedModel, FusedRefusal
from prunereg.harness.latency import FusedWorkload, Workload, measure_pair, prepare
from prunereg.harness.models import load_model
from prunereg.spec.adapters import adapters
from prunereg.spec.catalog import Phase, Scenario
from prunereg.spec.parameters import LayerDropParams, SublayerDropParams, TokenRoutingParams, WidthParams

EXAMPLES_BY_NAME = {row.name: row.examples[0] for row in adapters().values() if row.examples}
IDS = torch.randint(97, (2, 40), generator=torch.Generator().manual_seed(5))
PREFILL = 24
DECODE = Scenario(phase=Phase.decode, batch_size=3, seq_len=20)
PROMPT = Scenario(phase=Phase.prefill, batch_size=2, seq_len=16)
TIGHT: dict[str, Any] = {"rtol": 1e-5, "atol": 1e-5}
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA Graph capture needs a CUDA device")


def reference(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(ids, use_cache=False).logits


def check_fused(model, ids: torch.Tensor, prefill: int) -> FusedModel:
    """The fused forward's logits equal transformers': one full prefill, and a prefill then one token at a time."""
    expected = reference(model, ids)
    fused = FusedModel(model, ids.shape[0], ids.shape[1])
    with torch.inference_mode():
        torch.testing.assert_close(fused(ids, use_cache=False), expected, **TIGHT)
        steps = [fused(ids[:, :prefill])]
        steps += [fused(ids[:, t : t + 1], position=t) for t in range(prefill, ids.shape[1])]
    torch.testing.assert_close(torch.cat(steps, dim=1), expected, **TIGHT)
    return fused


@pytest.fixture(scope="module")
def mini():
    return load_model("prunereg-mini", "cpu", torch.float32).model


def test_embedded_model_fused_equals_transformers(mini):
    ids = torch.randint(mini.config.vocab_size, (2, 48), generator=torch.Generator().manual_seed(0))
    fused = check_fused(mini, ids, 32)
    assert all(layer.qkv.fused and layer.gate_up.fused for layer in fused.layers)
    assert [tuple(k.shape) for k, _ in fused.caches] == [(2, 4, 48, 16)] * 8  # [batch, kv_heads, max_len, head_dim]


@pytest.mark.parametrize("model_type", ARCHITECTURES)
@pytest.mark.parametrize("name,params", EXAMPLES)
def test_every_adapter_example_runs_fused_as_transformers_does(model_type, name, params):
    """Every example of every adapter runs fused on the three architectures (none is refused today)."""
    _, small = pruned(model_type, name, params)
    fused = check_fused(small, IDS, PREFILL)
    for layer, original in zip(fused.layers, small.model.layers, strict=True):
        if layer.has_attention:
            plain = not any(
                isinstance(original.self_attn.get_submodule(p), LowRankLinear) for p in ("q_proj", "k_proj")
            )
            assert layer.qkv.fused == plain  # low-rank factors keep their two GEMMs per projection
    assert (fused.capture_refusal == CAPTURE_REFUSAL) == (name == "token_routing")


def test_per_layer_shapes_and_dropped_blocks_have_no_cache():
    model = tiny("llama")
    params = SublayerDropParams(selection="explicit", layers=[0, 3, 4], sublayer="attention", sparsity=0.5)
    small = get_adapter("sublayer_drop").apply(copy.deepcopy(model), params)
    fused = FusedModel(small, 2, 8)
    assert [cache is None for cache in fused.caches] == [True, False, False, True, True, False]
    with torch.no_grad():  # a layer narrower than the others: its own head count and cache
        for proj in ("q_proj", "k_proj", "v_proj"):
            layer = model.model.layers[2].self_attn
            linear = getattr(layer, proj)
            keep = linear.out_features // 2
            setattr(layer, proj, torch.nn.Linear(64, keep, bias=False))
            getattr(layer, proj).weight.copy_(linear.weight[:keep])
        o = model.model.layers[2].self_attn.o_proj
        model.model.layers[2].self_attn.o_proj = torch.nn.Linear(32, 64, bias=False)
        model.model.layers[2].self_attn.o_proj.weight.copy_(o.weight[:, :32])
    fused = check_fused(model, IDS[:, :20], 12)
    assert (fused.layers[2].heads, fused.layers[2].kv_heads) == (4, 2) and fused.caches[2][0].shape[1] == 2


@pytest.mark.parametrize(
    "model_type,fields",
    [
        ("mistral", {"sliding_window": 16}),
        ("qwen2", {"sliding_window": 16, "use_sliding_window": True, "max_window_layers": 3}),
    ],
    ids=["mistral", "qwen2-some-layers"],
)
def test_a_sliding_window_inside_the_cache_is_applied_as_transformers_does(model_type, fields):
    model = tiny(model_type, **fields)
    fused = check_fused(model, IDS, PREFILL)  # a 24-token prefill is longer than the window: a banded mask
    expected = [16] * 6 if model_type == "mistral" else [None] * 3 + [16] * 3
    assert [layer.window for layer in fused.layers] == expected


def test_refusals_say_why():
    windowed = get_adapter("sparse_attention").apply(
        tiny("mistral", sliding_window=16), EXAMPLES_BY_NAME["sparse_attention"]
    )
    with pytest.raises(
        FusedRefusal, match="block-sparse attention under a sliding window of 16 tokens inside a 40-token"
    ):
        FusedModel(windowed, 2, 40)
    FusedModel(windowed, 2, 16)  # a window the cache does not exceed changes nothing
    hooked = tiny("llama")
    hooked.model.layers[1].mlp.register_forward_hook(lambda *_: None)
    with pytest.raises(FusedRefusal, match="layer 1.mlp has a forward hook fused mode would not run"):
        FusedModel(hooked, 2, 40)
    flex = tiny("llama")
    flex.set_attn_implementation("flex_attention")
    with pytest.raises(FusedRefusal, match="attention implementation 'flex_attention' is not SDPA"):
        FusedModel(flex, 2, 40)


def test_token_routing_runs_fused_but_is_not_captured():
    model = tiny("llama")
    routed = get_adapter("token_routing").apply(copy.deepcopy(model), TokenRoutingParams(sparsity=0.5))
    work = FusedWorkload(routed, DECODE)
    with pytest.raises(FusedRefusal, match="nonzero"):
        work.capture()


@pytest.mark.parametrize("scenario", [DECODE, PROMPT], ids=["decode", "prefill"])
@pytest.mark.parametrize("variant", ["dense", "layer_drop", "width"])
def test_fused_workload_computes_what_the_eager_one_does(variant, scenario):
    net = tiny("qwen2")
    if variant == "layer_drop":
        net = get_adapter("layer_drop").apply(copy.deepcopy(net), LayerDropParams(sparsity=0.5))
    if variant == "width":
        net = get_adapter("width").apply(copy.deepcopy(net), WidthParams(attention_sparsity=0.5, mlp_sparsity=0.5))
    expected = Workload(net, scenario).step().logits
    work = FusedWorkload(net, scenario)
    for _ in range(3):  # the decode step rewrites the same cache slot every time
        torch.testing.assert_close(work.step(), expected, **TIGHT)
        work.reset()


def test_prepare_runs_fused_uncaptured_on_cpu():
    model = tiny("llama")
    narrow = get_adapter("width").apply(copy.deepcopy(model), WidthParams(attention_sparsity=0.5, mlp_sparsity=0.5))
    works, execution, reason = prepare(model, narrow, DECODE, "fused")
    assert execution == "fused" and reason is None
    assert all(isinstance(work, FusedWorkload) and work.graph is None for work in works)
    timing = measure_pair(model, narrow, DECODE, warmup=1, repeats=3, mode="fused")
    assert (timing.execution, timing.fallback, len(timing.pruned)) == ("fused", None, 3)


def test_a_refused_pair_falls_back_to_graph_mode_and_records_why():
    """On a CPU graph capture fails too, so the pair ends eager, with both reasons."""
    model = tiny("llama")
    hooked = copy.deepcopy(model)
    hooked.model.layers[0].register_forward_hook(lambda *_: None)
    works, execution, reason = prepare(model, hooked, DECODE, "fused")
    assert execution == "eager" and type(works[0]) is Workload
    assert reason is not None and reason.startswith(
        "fused mode refused the pruned model: FusedRefusal: layer 0 has a forward hook fused mode would not run; "
        "graph mode failed on the dense model: "
    )


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("compiled", [False, True], ids=["uncompiled", "compiled"])
@pytest.mark.parametrize("scenario", [DECODE, PROMPT], ids=["decode", "prefill"])
def test_fused_replay_computes_what_eager_does(scenario, compiled):
    net = tiny("qwen2").cuda()
    expected = Workload(net, scenario).step().logits
    works, execution, reason = prepare(net, net, scenario, "fused", compile_fused=compiled)
    assert (execution, reason) == ("fused", None)
    work = works[1]
    assert isinstance(work, FusedWorkload) and work.graph is not None
    for _ in range(3):
        with torch.inference_mode():
            work.output.fill_(float("nan"))
        work.step()
        torch.cuda.synchronize()
        torch.testing.assert_close(work.output, expected, atol=1e-4, rtol=1e-4)


def test_the_cli_accepts_fused_and_keeps_it_on_cuda(tmp_path):
    from pathlib import Path

    from typer.testing import CliRunner

    from prunereg.cli import app

    dense = Path(__file__).parent.parent / "submissions" / "dense.json"
    out = CliRunner().invoke(app, ["evaluate", str(dense), "--mode", "fused", "--db", str(tmp_path / "r.db")])
    assert out.exit_code == 1 and "Traceback" not in out.output
    assert "error: --mode fused captures CUDA Graphs and needs --device cuda" in out.output
