"""The contract every registered adapter keeps, on tiny Llama, Qwen2 and Mistral models.

Parametrized over the adapter table (spec/adapters.py), plugins included where they are installed:
each row's `unpruned` point gives the dense model back, and each of its `examples` prunes to the
shapes and parameter count its parameter model implies, keeps grouped-query attention well formed,
and decodes token by token with a KV cache exactly as one full forward computes. A new adapter is
covered by its table row; its own test file keeps only what is particular to its family.
"""

from __future__ import annotations

import copy
from collections import Counter

import pytest
import torch
from tiny_models import ARCHITECTURES, logits, tiny
from transformers import DynamicCache

from prunereg.adapters import get_adapter
from prunereg.harness.calibration import calibration_ids
from prunereg.harness.latency import cache_argument
from prunereg.harness.models import architecture_of
from prunereg.spec.adapters import adapters
from prunereg.spec.parameters import linear_shapes, parameter_count

ROWS = list(adapters().values())
EXAMPLES = [
    pytest.param(row.name, params, id=f"{row.name}-{i}") for row in ROWS for i, params in enumerate(row.examples)
]
UNPRUNED = [pytest.param(row.name, row.unpruned, id=row.name) for row in ROWS if row.unpruned is not None]
IDS = torch.randint(97, (2, 40), generator=torch.Generator().manual_seed(5))
"""40 tokens: into the third 16-token routing window and the third 16-token attention block."""
PREFILL = 24
_PRUNED: dict[tuple[str, str, str], tuple] = {}


def count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def described(model, model_type: str):
    """The catalog description of a (tiny or pruned) model's config; Qwen2 always biases q/k/v."""
    arch = architecture_of(model.config, f"tiny-{model_type}", "tests/tiny_models.py")
    return arch.model_copy(update={"attention_bias": model_type == "qwen2"})


def pruned(model_type: str, name: str, params):
    """The dense tiny model and its pruned copy, built once per point (the tests only read them)."""
    key = (model_type, name, repr(params))
    if key not in _PRUNED:
        model = tiny(model_type)
        calibration, config = params.calibration_needed(), model.config  # random ids: a tiny model has no tokenizer
        ids = None
        if calibration is not None:
            ids = calibration_ids(calibration, None, config.vocab_size, config.max_position_embeddings)
        _PRUNED[key] = model, get_adapter(name).apply(copy.deepcopy(model), params, ids)
    return _PRUNED[key]


def test_every_adapter_has_examples_and_every_example_fits_the_tiny_models():
    arch = described(tiny("llama"), "llama")
    for row in ROWS:
        assert row.examples or row.name == "checkpoint", row.name  # its points name folders: test_adapter_checkpoint.py
        for params in (*row.examples, row.unpruned):
            assert params is None or isinstance(params, row.params)
            assert params is None or params.misfit(arch) is None, (row.name, params)


@pytest.mark.parametrize("model_type", ARCHITECTURES)
@pytest.mark.parametrize("name,params", UNPRUNED)
def test_removing_nothing_equals_dense(model_type, name, params):
    model, same = pruned(model_type, name, params)
    torch.testing.assert_close(logits(same, IDS), logits(model, IDS), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("model_type", ARCHITECTURES)
@pytest.mark.parametrize("name,params", EXAMPLES)
def test_shapes_and_parameter_count_are_what_the_parameters_imply(model_type, name, params):
    model, small = pruned(model_type, name, params)
    arch = described(model, model_type)
    assert count(model) == parameter_count(arch)  # the description itself is right
    after = params.architecture_after(arch)
    assert described(small, model_type) == after
    assert count(small) == params.parameters_after(arch)
    shapes, seen = linear_shapes(after), 0
    for layer in small.model.layers:
        for path, module in layer.named_modules():
            leaf = path.rsplit(".", 1)[-1]
            if leaf in shapes:
                assert (module.in_features, module.out_features) == shapes[leaf], path
                seen += 1
    assert seen > 0
    assert small.model.embed_tokens.weight.shape == (after.vocab_size, after.hidden_size)
    assert small.lm_head.weight.shape == (after.vocab_size, after.hidden_size)


@pytest.mark.parametrize("model_type", ARCHITECTURES)
@pytest.mark.parametrize("name,params", EXAMPLES)
def test_grouped_query_attention_stays_valid(model_type, name, params):
    """KV heads divide the query heads and every head keeps its size, in the config and in every layer."""
    model, small = pruned(model_type, name, params)
    head_dim, config = described(model, model_type).head_dim, small.config
    assert config.num_attention_heads % config.num_key_value_heads == 0
    assert described(small, model_type).head_dim == head_dim
    for layer in small.model.layers:
        attention = layer.self_attn
        if not hasattr(attention, "q_proj"):
            continue  # a dropped attention block
        q, k, v = (getattr(attention, p).out_features for p in ("q_proj", "k_proj", "v_proj"))
        assert attention.head_dim == head_dim and k == v
        assert (q // head_dim, k // head_dim) == (config.num_attention_heads, config.num_key_value_heads)
        assert q % head_dim == 0 and k % head_dim == 0
        assert attention.num_key_value_groups == config.num_attention_heads // config.num_key_value_heads


@pytest.mark.parametrize("model_type", ARCHITECTURES)
@pytest.mark.parametrize("name,params", EXAMPLES)
def test_cached_decoding_equals_a_full_forward(model_type, name, params):
    """A prefill, then one token at a time against the KV cache: the same logits as one forward.

    Dynamic adapters choose per token, so this is where a choice that depends on the batch's other
    tokens (rather than on position and row alone) would show.
    """
    _, small = pruned(model_type, name, params)
    cache = DynamicCache(config=small.config)
    with torch.inference_mode():
        steps = [small(IDS[:, :PREFILL], use_cache=True, **{cache_argument(small): cache}).logits]
        for t in range(PREFILL, IDS.shape[1]):
            steps.append(small(IDS[:, t : t + 1], use_cache=True, **{cache_argument(small): cache}).logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), logits(small, IDS), rtol=1e-4, atol=1e-4)


STAND_INS = [
    pytest.param(row.name, params, id=f"{row.name}-{i}")
    for row in ROWS
    for i, params in enumerate(row.examples)
    if params.shape_stand_in() is not None
]


def linear_weights(model) -> Counter:
    """How many weights of each kind and shape (the layer they are in does not change a GEMM's shape)."""
    return Counter(
        (n.split(".")[-2], tuple(p.shape))
        for n, p in model.named_parameters()
        if n.endswith("weight") and "norm" not in n
    )


@pytest.mark.parametrize("model_type", ARCHITECTURES)
@pytest.mark.parametrize("name,params", STAND_INS)
def test_a_shape_stand_in_prunes_to_the_same_shapes_without_calibration(model_type, name, params):
    """What `prunereg evaluate` runs on random weights in place of a calibrated selection: the same GEMMs."""
    _, faithful = pruned(model_type, name, params)
    stand_in = params.shape_stand_in()
    assert stand_in.calibration_needed() is None and type(stand_in) is type(params)
    _, standing = pruned(model_type, name, stand_in)
    assert linear_weights(standing) == linear_weights(faithful)
    assert standing.config.to_dict() == faithful.config.to_dict()
