"""Declarations are exact (issue 14): what a point lists is what it removes, and what it removes is priced.

A fraction stated beside the layers or per-layer widths it describes must equal their share, or
`prunereg validate` names both numbers; effects resolve to the share the adapter really removes, so one
cut declared two ways prices one speedup; `per_model` parameters are checked and run on the model they
name only; a per-layer width allocation prunes, traces, prices and saves (or is refused as a checkpoint
with the reason) on the embedded model; and every enum value of the submission schema says what it means.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from prunereg.spec.catalog import EMBEDDED_MODEL, Phase, Scenario, devices, models
from prunereg.spec.checks import CHECKS
from prunereg.spec.costmodel import estimate, theoretical_speedup
from prunereg.spec.effects import resolve
from prunereg.spec.parameters import LayerDropParams, WidthParams
from prunereg.spec.schemas import rendered
from prunereg.spec.submission import Submission

ROOT = Path(__file__).parent.parent
MINI, LLAMA2 = models()[EMBEDDED_MODEL], models()["llama-2-7b"]
DECODE = Scenario(phase=Phase.decode, batch_size=1, seq_len=128)
CPU = devices()["cpu-generic"]
FLAP_ALLOCATION = [(4, 384), (3, 352), (2, 288), (2, 256), (3, 256), (3, 288), (4, 320), (4, 384)]
"""(KV groups, MLP channels) kept per layer of the 8-layer embedded model: FLAP-style, wider at both ends."""


def submission(name: str, points: list[dict], claims_on: tuple[str, ...] = ()) -> dict:
    """A shipped submission with these operating points, and one reported claim per model in `claims_on`."""
    document = json.loads((ROOT / "submissions" / name).read_text())
    document["adapter"]["operating_points"] = points
    template = document["quality_claims"][0]
    document["quality_claims"] = [
        {**template, "base_model": model, "operating_point": points[0]["name"]} for model in claims_on
    ]
    return document


def problems(document: dict) -> list[str]:
    sub = Submission.model_validate(document)
    return [f"{p.pointer}: {p.message}" for check in CHECKS for p in check(sub)]


def validate_cli(document: dict, tmp_path: Path) -> subprocess.CompletedProcess:
    path = tmp_path / f"{document['method']['slug']}.json"
    path.write_text(json.dumps(document))
    return subprocess.run(
        [sys.executable, "-m", "prunereg.cli", "validate", str(path)], capture_output=True, text=True, timeout=120
    )


def test_indices_that_disagree_with_their_fraction_are_refused_naming_both_numbers(tmp_path):
    bad = submission(
        "shortgpt.json", [{"name": "two", "params": {"sparsity": 0.2, "selection": "explicit", "layers": [2, 4]}}]
    )
    run = validate_cli(bad, tmp_path)
    assert run.returncode == 1
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in run.stderr
    assert "/adapter/operating_points/0/params" in lines[0]
    assert "sparsity 0.2 disagrees with the 2 of 8 layers" in lines[0] and "(0.25)" in lines[0]
    exact = submission(
        "shortgpt.json", [{"name": "two", "params": {"sparsity": 0.25, "selection": "explicit", "layers": [2, 4]}}]
    )
    derived = submission("shortgpt.json", [{"name": "two", "params": {"selection": "explicit", "layers": [2, 4]}}])
    assert problems(exact) == problems(derived) == []
    assert validate_cli(derived, tmp_path).returncode == 0


def test_a_selection_that_chooses_its_layers_needs_its_fraction():
    with pytest.raises(ValueError, match="selection 'deepest' needs 'sparsity'"):
        LayerDropParams(selection="deepest")


def test_the_same_cut_declared_by_sparsity_and_by_explicit_layers_prices_the_same():
    """ShortGPT's 2 of 8 layers, stated as 0.25, as 0.2 (which rounds to the same 2 layers) and as two indices."""
    effects = Submission.model_validate(json.loads((ROOT / "submissions/shortgpt.json").read_text())).effects
    cuts = [
        LayerDropParams(sparsity=0.25),
        LayerDropParams(sparsity=0.2),
        LayerDropParams(selection="explicit", layers=[2, 4]),
    ]
    resolved = [resolve(effects, params, MINI) for params in cuts]
    assert {e.fraction for r in resolved for e in r} == {0.25}
    speedups = {theoretical_speedup(MINI, CPU, DECODE, r) for r in resolved}
    assert len(speedups) == 1
    (speedup,) = speedups
    assert speedup == pytest.approx(
        estimate(MINI, CPU, DECODE).time_s / estimate(MINI, CPU, DECODE, resolved[0]).time_s
    )
    as_stated = [e.model_copy(update={"fraction": 0.2}) for e in resolved[0]]  # what pricing the stated 0.2 gave
    assert theoretical_speedup(MINI, CPU, DECODE, as_stated) < speedup


def test_a_per_model_point_is_checked_and_run_only_on_the_model_it_names():
    deep = list(range(20, 28))  # eight of Llama-2-7B's 32 layers: none exists in the 8-layer embedded model
    point = {
        "name": "quarter",
        "params": {"selection": "explicit", "layers": [2, 4]},
        "per_model": {"llama-2-7b": {"selection": "explicit", "layers": deep}},
    }
    document = submission("shortgpt.json", [point], claims_on=("llama-2-7b",))
    assert problems(document) == []
    sub = Submission.model_validate(document)
    op = sub.point("quarter")
    assert op.params_for("llama-2-7b").layers == deep and op.params_for(EMBEDDED_MODEL).layers == [2, 4]
    assert op.params_for("mistral-7b") is op.params
    assert {e.fraction for e in resolve(sub.effects, op.params_for("llama-2-7b"), LLAMA2)} == {0.25}
    assert {e.fraction for e in resolve(sub.effects, op.params_for(EMBEDDED_MODEL), MINI)} == {0.25}

    plain = submission("shortgpt.json", [{**point, "params": point["per_model"]["llama-2-7b"], "per_model": None}])
    assert problems(plain) == [
        "/adapter/operating_points/0/params: on prunereg-mini: layer 27 does not exist in a 8-layer model"
    ]
    wrong = submission("shortgpt.json", [{**point, "per_model": {"llama-2-7b": point["params"] | {"sparsity": 0.5}}}])
    assert problems(wrong) == [
        "/adapter/operating_points/0/per_model/llama-2-7b: on llama-2-7b: sparsity 0.5 disagrees with the 2 of 32 "
        "layers (layers [2, 4]) removed (0.0625)"
    ]
    unknown = submission("shortgpt.json", [{**point, "per_model": {"llama-9": point["params"]}}])
    assert problems(unknown) == [
        "/adapter/operating_points/0/per_model/llama-9: 'llama-9' is not a catalog model (prunereg list models)"
    ]


def test_evaluate_runs_a_per_model_point_with_the_model_s_own_parameters_and_refuses_plain_ones_that_do_not_fit():
    from prunereg.evaluate import EvaluationError, check_fit

    sub = Submission.model_validate(
        submission(
            "shortgpt.json",
            [
                {
                    "name": "quarter",
                    "params": {"selection": "explicit", "layers": list(range(20, 28))},
                    "per_model": {"prunereg-mini": {"selection": "explicit", "layers": [2, 4]}},
                }
            ],
        )
    )
    check_fit(list(sub.adapter.operating_points), MINI)
    check_fit(list(sub.adapter.operating_points), LLAMA2)  # plain params: layers 20-27 of 32
    other = MINI.model_copy(update={"name": "another-8-layer-model"})
    with pytest.raises(
        EvaluationError, match="per_model parameters are for prunereg-mini only.*layer 27 does not exist"
    ):
        check_fit(list(sub.adapter.operating_points), other)


@pytest.fixture(scope="module")
def mini():
    from prunereg.harness.models import load_model

    return load_model(EMBEDDED_MODEL, "cpu", torch.float32)


def test_apply_point_prunes_the_embedded_model_with_its_per_model_entry_and_resolves_on_it(mini):
    from prunereg.evaluate import apply_point

    point = {
        "name": "quarter",
        "params": {"sparsity": 0.5},
        "per_model": {"prunereg-mini": {"selection": "explicit", "layers": [2, 4]}},
    }
    sub = Submission.model_validate(submission("shortgpt.json", [point]))
    dense_layers = list(mini.model.model.layers)
    pruned, effects = apply_point(sub, mini, sub.point("quarter"))
    assert len(pruned.model.layers) == 6 and {e.fraction for e in effects} == {0.25}
    kept = [dense_layers[i] for i in (0, 1, 3, 5, 6, 7)]
    for small, dense in zip(pruned.model.layers, kept):
        assert torch.equal(small.mlp.down_proj.weight, dense.mlp.down_proj.weight)


def per_layer(allocation=FLAP_ALLOCATION, **stated) -> WidthParams:
    return WidthParams(per_layer=[{"kv_groups": g, "channels": c} for g, c in allocation], **stated)


def flap_effects():
    return Submission.model_validate(json.loads((ROOT / "submissions/flap.json").read_text())).effects


def test_a_per_layer_width_states_its_fractions_exactly_or_not_at_all():
    groups = sum(4 - g for g, _ in FLAP_ALLOCATION) / 32
    channels = sum(384 - c for _, c in FLAP_ALLOCATION) / (8 * 384)
    assert per_layer().misfit(MINI) is None
    assert per_layer(attention_sparsity=groups, mlp_sparsity=channels).misfit(MINI) is None
    assert per_layer(attention_sparsity=0.25).misfit(MINI) == (
        f"attention_sparsity 0.25 disagrees with the 7 of 32 KV groups of per_layer removed ({groups:g})"
    )
    assert per_layer(FLAP_ALLOCATION[:6]).misfit(MINI) == "per_layer gives 6 layers, the model has 8"
    assert "per_layer[0] keeps 5 KV groups" in per_layer([(5, 384)] + FLAP_ALLOCATION[1:]).misfit(MINI)
    with pytest.raises(ValueError, match="give attention_sparsity and mlp_sparsity, or per_layer"):
        WidthParams(attention_sparsity=0.25)


def hand_decode_bytes(allocation, arch=MINI, seq_len=DECODE.seq_len, dtype_bytes=2) -> float:
    """Bytes one batch-1 decode step moves, layer by layer at each layer's own width (the cost model's
    conventions: weights once, activations in and out, K and V of the cache per KV head)."""
    h, hd, qpg = arch.hidden_size, arch.head_dim, arch.queries_per_kv_group
    total = arch.vocab_size * h + h + arch.vocab_size  # lm_head: weights, its input row, its output row
    for groups, channels in allocation:
        q, kv = groups * qpg * hd, groups * hd
        total += h * (q + 2 * kv) + h + (q + 2 * kv)  # qkv_proj
        total += q * h + q + h  # o_proj
        total += h * 2 * channels + h + 2 * channels  # gate_up_proj
        total += channels * h + channels + h  # down_proj
        total += 2 * (seq_len * kv + q)  # attn_score: K cache and queries; attn_value: V cache and outputs
    return total * dtype_bytes


def test_the_cost_model_prices_a_per_layer_allocation_as_its_layers_add_up():
    effects = resolve(flap_effects(), per_layer(), MINI)
    pruned, dense = estimate(MINI, CPU, DECODE, effects), estimate(MINI, CPU, DECODE)
    assert {r.bound for r in (*pruned.rows, *dense.rows) if r.count} == {"memory"}  # so time is bytes / bandwidth
    assert pruned.bytes == pytest.approx(hand_decode_bytes(FLAP_ALLOCATION), rel=1e-12)
    assert dense.bytes == pytest.approx(hand_decode_bytes([(4, 384)] * 8), rel=1e-12)
    speedup = hand_decode_bytes([(4, 384)] * 8) / hand_decode_bytes(FLAP_ALLOCATION)
    assert theoretical_speedup(MINI, CPU, DECODE, effects) == pytest.approx(speedup, rel=1e-12)


def test_per_layer_width_is_pruned_and_traced_as_declared_on_the_embedded_model(mini):
    from prunereg.adapters import get_adapter
    from prunereg.adapters.width import layer_width
    from prunereg.evaluate import trace_point
    from prunereg.spec.parameters import parameter_count

    params = per_layer()
    pruned = get_adapter("width").apply(copy.deepcopy(mini.model), params)
    assert [layer_width(layer) for layer in pruned.model.layers] == FLAP_ALLOCATION
    assert sum(p.numel() for p in pruned.parameters()) == params.parameters_after(MINI) < parameter_count(MINI)
    effects = resolve(flap_effects(), params, MINI)
    rows, mismatches = trace_point(mini, pruned, effects)
    assert mismatches == []
    kept = {r.gemm: r.observed for r in rows if r.observed is not None}
    groups, channels = sum(g for g, _ in FLAP_ALLOCATION) / 32, sum(c for _, c in FLAP_ALLOCATION) / (8 * 384)
    for gemm in ("qkv_proj", "o_proj", "attn_score", "attn_value"):
        assert kept[gemm] == pytest.approx(groups, abs=1e-12), gemm
    for gemm in ("gate_up_proj", "down_proj"):
        assert kept[gemm] == pytest.approx(channels, abs=1e-12), gemm

    one_channel_less = resolve(flap_effects(), per_layer([*FLAP_ALLOCATION[:-1], (4, 383)]), MINI)
    _, mismatches = trace_point(mini, pruned, one_channel_less)  # declares one channel fewer than the model keeps
    assert [m.split(":")[0] for m in mismatches] == ["gate_up_proj", "down_proj"]


def test_a_per_layer_width_decodes_against_a_static_and_a_dynamic_cache_as_one_forward_computes(mini):
    """Each cache layer takes its shape from its own keys, so the graph modes' StaticCache holds uneven layers."""
    from transformers import DynamicCache, StaticCache

    from prunereg.adapters import get_adapter
    from prunereg.harness.latency import cache_argument

    pruned = get_adapter("width").apply(copy.deepcopy(mini.model), per_layer())
    ids = torch.randint(mini.model.config.vocab_size, (2, 20), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        full = pruned(ids).logits
        for cache in (StaticCache(config=pruned.config, max_cache_len=32), DynamicCache(config=pruned.config)):
            steps = [pruned(ids[:, :12], use_cache=True, **{cache_argument(pruned): cache}).logits]
            for t in range(12, 20):
                steps.append(pruned(ids[:, t : t + 1], use_cache=True, **{cache_argument(pruned): cache}).logits)
            torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-4, atol=1e-4)


def test_a_non_uniform_width_is_refused_as_a_checkpoint_and_a_uniform_per_layer_one_saves_and_reloads(mini, tmp_path):
    from transformers import AutoModelForCausalLM

    from prunereg.adapters import get_adapter
    from prunereg.harness.checkpoint import CheckpointRefused, save_pruned

    width = get_adapter("width")
    uneven = width.apply(copy.deepcopy(mini.model), per_layer())
    with pytest.raises(
        CheckpointRefused,
        match=r"different widths \(2-4 KV groups, 256-384 MLP channels\).*one "
        "num_key_value_heads and one intermediate_size for all layers",
    ):
        save_pruned(width, uneven, mini.tokenizer, tmp_path / "uneven")
    assert not (tmp_path / "uneven").exists()

    even = width.apply(
        copy.deepcopy(mini.model), per_layer([(2, 288)] * 8)
    )  # 4 query heads: transformers wants hidden % heads == 0
    save_pruned(width, even, mini.tokenizer, tmp_path / "even")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "even", dtype=torch.float32)
    assert (reloaded.config.num_key_value_heads, reloaded.config.intermediate_size) == (2, 288)
    ids = torch.randint(mini.model.config.vocab_size, (1, 32), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        torch.testing.assert_close(reloaded(ids).logits, even(ids).logits, rtol=1e-5, atol=1e-5)


def test_single_query_heads_are_refused_for_the_width_adapter():
    document = json.loads((ROOT / "submissions/flap.json").read_text())
    document["effects"][0]["granularity"] = "head"
    assert problems(document) == [
        "/effects/0/granularity: adapter 'width' removes 'channel', 'kv_group', not 'head': it removes whole KV "
        "groups with their query heads, never single query heads"
    ]


def test_every_enum_value_of_the_submission_schema_says_what_it_means():
    schema = next(json.loads(text) for path, text in rendered().items() if path.name == "submission.schema.json")
    bare, described = [], 0

    def walk(node, pointer):
        nonlocal described
        if isinstance(node, dict):
            if "enum" in node:
                bare.append(pointer)
            branches = node.get("oneOf", [])
            if branches and all("const" in branch for branch in branches):
                for i, branch in enumerate(branches):
                    assert branch.get("description"), f"{pointer}/oneOf/{i}"
                    described += 1
            for key, value in node.items():
                walk(value, f"{pointer}/{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{pointer}/{i}")

    walk(schema, "")
    assert bare == []
    assert described > 60  # the taxonomy's enums, every selection, policy, sublayer and projection
    granularity = {b["const"]: b["description"] for b in schema["$defs"]["Granularity"]["oneOf"]}
    assert "no built-in adapter removes these" in granularity["head"]


def test_the_published_schema_requires_a_fraction_exactly_where_the_parameters_do():
    from jsonschema import Draft202012Validator

    schema = next(json.loads(text) for path, text in rendered().items() if path.name == "submission.schema.json")
    validator = Draft202012Validator(schema)

    def valid(name: str, params: dict) -> bool:
        return validator.is_valid(submission(name, [{"name": "p", "params": params}]))

    assert valid("shortgpt.json", {"selection": "explicit", "layers": [2, 4]})
    assert not valid("shortgpt.json", {"selection": "deepest"})
    assert not valid("shortgpt.json", {})
    assert valid("flap.json", {"per_layer": [{"kv_groups": 4, "channels": 384}] * 8})
    assert valid("flap.json", {"attention_sparsity": 0.25, "mlp_sparsity": 0.25})
    assert not valid("flap.json", {"attention_sparsity": 0.25})


def test_the_registry_keeps_a_point_s_per_model_parameters_for_its_method_page(engine):
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from prunereg.registry.ingest import ingest
    from prunereg.registry.schema import OperatingPointRecord

    point = {
        "name": "quarter",
        "params": {"selection": "explicit", "layers": [2, 4]},
        "per_model": {"llama-2-7b": {"selection": "explicit", "layers": [20, 21, 22, 23, 24, 25, 26, 27]}},
    }
    ingest(engine, Submission.model_validate(submission("shortgpt.json", [point], claims_on=("llama-2-7b",))))
    with Session(engine) as session:
        (stored,) = session.scalars(select(OperatingPointRecord)).all()
    assert stored.params["layers"] == [2, 4]
    assert stored.params["per_model"]["llama-2-7b"]["layers"] == list(range(20, 28))
