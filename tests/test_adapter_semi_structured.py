"""semi_structured_2_4: two of every four weights along K; sparse tensor cores where they exist."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
from pydantic import ValidationError
from tiny_models import ARCHITECTURES, IDS, logits, tiny
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM

from prunereg.adapters import get_adapter, semi_structured
from prunereg.adapters.base import PROJECTIONS, linears
from prunereg.adapters.semi_structured import SparseLinear, kernel_of, mask_2_4
from prunereg.harness.checkpoint import save_pruned
from prunereg.harness.trace import trace_forward
from prunereg.spec.catalog import EMBEDDED_MODEL, models
from prunereg.spec.parameters import SemiStructuredParams

ADAPTER = get_adapter("semi_structured_2_4")
VIEWS = {torch.ops.aten.reshape.default, torch.ops.aten.view.default}


def hand_masked(weight: torch.Tensor) -> torch.Tensor:
    """Zero the two smallest |w| of every group of four, one group at a time."""
    out = weight.detach().clone()
    for row in out:
        for start in range(0, row.numel(), 4):
            group = row[start : start + 4]
            group[group.abs().argsort()[:2]] = 0
    return out


@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_every_group_of_four_keeps_exactly_two(model_type):
    model = tiny(model_type)
    params = SemiStructuredParams(projections=["qkv_proj", "gate_up_proj"])
    pruned = ADAPTER.apply(copy.deepcopy(model), params)
    for linear in linears(pruned, params.projections):
        nonzero = (linear.weight != 0).reshape(linear.out_features, -1, 4).sum(-1)
        assert (nonzero == 2).all()
        assert kernel_of(linear) == "masked dense"
    for before, after in zip(linears(model, ["o_proj", "down_proj"]), linears(pruned, ["o_proj", "down_proj"])):
        assert torch.equal(before.weight, after.weight)
    assert sum(p.numel() for p in pruned.parameters()) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_output_equals_a_hand_masked_dense_model(model_type):
    model = tiny(model_type)
    pruned = ADAPTER.apply(copy.deepcopy(model), SemiStructuredParams())
    reference = copy.deepcopy(model)
    with torch.no_grad():
        for linear in linears(reference, list(PROJECTIONS)):
            linear.weight.copy_(hand_masked(linear.weight))
    torch.testing.assert_close(logits(pruned, IDS), logits(reference, IDS))


def test_k_must_be_divisible_by_four():
    with pytest.raises(ValueError, match="divisible by 4"):
        mask_2_4(torch.randn(8, 6))


def test_the_schema_refuses_an_empty_projection_list():
    with pytest.raises(ValidationError):
        SemiStructuredParams(projections=[])


def test_the_cusparselt_path_exports_whole_as_one_op_on_unpadded_rows():
    """What torch.compile (fused mode) and the tracer see of a SparseLinear on cuSPARSELt, traced on fake tensors:
    no graph break, one prunereg::sparse_linear_2_4 on the model's own 6 rows (the padding to 8 stays inside)."""
    linear = nn.Linear(64, 32, dtype=torch.bfloat16)
    linear.__class__ = SparseLinear  # SparseLinear.holding's end state; its compressed weight needs a GPU
    linear.register_buffer("packed", torch.zeros(64 * 32 * 9 // 16, dtype=torch.bfloat16), persistent=False)
    graph = torch.export.export(linear, (torch.randn(2, 3, 64, dtype=torch.bfloat16),)).graph
    calls = [n for n in graph.nodes if n.op == "call_function" and n.target not in VIEWS]
    assert [(n.target, tuple(n.meta["val"].shape)) for n in calls] == [
        (torch.ops.prunereg.sparse_linear_2_4.default, (6, 32))
    ]


def test_the_op_runs_the_algorithm_and_split_k_cusparselt_searched(monkeypatch):
    """`torch._C._cusparselt.mm_search` returns (algorithm, split-K, split-K mode, algorithms): the op runs all
    three and the trace names them; where only the deprecated search exists, its algorithm unsplit. The two
    cuSPARSELt calls are stand-ins (they need a GPU); the CUDA test below runs the real ones."""
    ran: list[dict] = []

    def sparse_mm(packed, dense_t, **options):
        ran.append(options)
        return dense_t.new_zeros(dense_t.shape[1], 16)

    monkeypatch.setattr(torch, "_cslt_sparse_mm", sparse_mm)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)  # a CPU build raises here
    monkeypatch.setattr(torch._C, "_cusparselt", SimpleNamespace(mm_search=lambda *a: (10, -1, 1, 20)), raising=False)
    x, packed = torch.randn(6, 32, dtype=torch.bfloat16), torch.zeros(48, dtype=torch.bfloat16)
    assert semi_structured.sparse_linear_2_4(x, packed, None, 16).shape == (6, 16)
    assert ran[-1]["transpose_result"] is True
    assert (ran[-1]["alg_id"], ran[-1]["split_k"], ran[-1]["split_k_mode"]) == (10, -1, 1)
    assert semi_structured.algorithm(x, packed, 16) == "algorithm 10 segment-K"

    monkeypatch.delattr(torch._C, "_cusparselt", raising=False)
    monkeypatch.setattr(torch, "_cslt_sparse_mm_search", lambda *a, **k: 7)
    other = torch.zeros(48, dtype=torch.bfloat16)  # another weight: searched afresh
    semi_structured.sparse_linear_2_4(x, other, None, 16)
    assert (ran[-1]["alg_id"], ran[-1]["split_k"], ran[-1]["split_k_mode"]) == (7, 1, -1)
    assert semi_structured.algorithm(x, other, 16) == "algorithm 7"
    monkeypatch.setitem(semi_structured._ALGORITHMS, semi_structured._key(x, other, 16), (3, 4, 0))
    assert semi_structured.algorithm(x, other, 16) == "algorithm 3 split-K 4"


def _sparse_capable() -> bool:
    return torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 0)


@pytest.mark.cuda
@pytest.mark.skipif(
    not _sparse_capable(), reason="needs a CUDA GPU with sparse tensor cores (compute capability >= 8.0)"
)
def test_sparse_kernel_equals_masked_dense_on_cuda():
    config = AutoConfig.for_model(
        "llama",
        vocab_size=128,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=8,
        num_key_value_heads=4,
        head_dim=32,
        max_position_embeddings=128,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).cuda().eval()
    pruned = ADAPTER.apply(copy.deepcopy(model), SemiStructuredParams())
    reference = copy.deepcopy(model)
    with torch.no_grad():
        for linear in linears(reference, list(PROJECTIONS)):
            linear.weight.mul_(mask_2_4(linear.weight))
    for linear in linears(pruned, list(PROJECTIONS)):
        assert isinstance(linear.weight, torch.sparse.SparseSemiStructuredTensor)
        assert kernel_of(linear).startswith("sparse 2:4")
    ids = torch.randint(128, (2, 64), generator=torch.Generator().manual_seed(1)).cuda()
    torch.testing.assert_close(logits(pruned, ids), logits(reference, ids), rtol=2e-2, atol=2e-2)
    odd = ids[:, :3]  # 6 rows, under cuSPARSELt's 8: padded to 8 inside prunereg::sparse_linear_2_4
    torch.testing.assert_close(logits(pruned, odd), logits(reference, odd), rtol=2e-2, atol=2e-2)
    if torch.backends.cusparselt.is_available():  # an algorithm searched per padded row count, M traced unpadded
        assert {rows for *_, rows in semi_structured._ALGORITHMS} >= {8, 128}
        q_proj = {(t.m, t.kernel) for t in trace_forward(pruned, odd) if t.gemm == "qkv_proj" and t.n == 256}
        searched = [
            semi_structured.algorithm(torch.empty(6, 256, dtype=torch.bfloat16), layer.self_attn.q_proj.packed, 256)
            for layer in pruned.model.layers
        ]
        assert q_proj == {(6, f"sparse 2:4 (cuSPARSELt, {algorithm})") for algorithm in searched}


def test_a_checkpoint_reloads_and_reapplying_changes_nothing(tmp_path):
    pruned = ADAPTER.apply(tiny("qwen2"), SemiStructuredParams())
    save_pruned(ADAPTER, pruned, None, tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    torch.testing.assert_close(logits(reloaded, IDS), logits(pruned, IDS), rtol=0, atol=0)
    again = ADAPTER.apply(copy.deepcopy(reloaded), SemiStructuredParams())
    for first, second in zip(linears(reloaded, list(PROJECTIONS)), linears(again, list(PROJECTIONS))):
        assert torch.equal(first.weight, second.weight)


def test_validation_refuses_a_k_that_four_does_not_divide():
    arch = models()[EMBEDDED_MODEL]
    assert SemiStructuredParams().misfit(arch) is None
    odd = arch.model_copy(update={"intermediate_size": 386})
    assert SemiStructuredParams().misfit(odd) == "2:4 needs K divisible by 4: down_proj (K=386)"
    assert SemiStructuredParams(projections=["qkv_proj"]).misfit(odd) is None
