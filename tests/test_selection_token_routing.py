"""token_routing's policy 'trained': Mixture-of-Depths' router trained on calibration ids, base frozen.

On tiny random models: cached decoding equals a full forward, training is repeatable for a
calibration, no calibration is refused, and the capacity is exact on the calibration ids and holds
within the declaration check's tolerance on other ids of the same kind. On the embedded model
(slow): the trained router beats the seeded rule at the Mixture-of-Depths submission's points, and
its capacity on held-out text passes the declaration check.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from tiny_models import logits, tiny
from transformers import DynamicCache

from prunereg.adapters import get_adapter
from prunereg.adapters.token_routing import RoutedMLP
from prunereg.harness.calibration import calibration_ids
from prunereg.harness.latency import cache_argument
from prunereg.harness.models import architecture_of
from prunereg.harness.trace import check_declaration
from prunereg.spec.calibration import Calibration
from prunereg.spec.catalog import Phase, Scenario
from prunereg.spec.effects import resolve
from prunereg.spec.parameters import TokenRoutingParams
from prunereg.spec.validate import validate_file

ROUTING = get_adapter("token_routing")
SMALL = Calibration(sequences=4, length=32)
SUBMISSION, _ = validate_file(Path(__file__).resolve().parents[1] / "submissions" / "mixture-of-depths.json")


def trained(sparsity: float = 0.5, calibration: Calibration = SMALL, **extra) -> TokenRoutingParams:
    return TokenRoutingParams(sparsity=sparsity, policy="trained", calibration=calibration, **extra)


def ids_for(calibration: Calibration, model) -> torch.Tensor:
    return calibration_ids(calibration, None, model.config.vocab_size, model.config.max_position_embeddings)


def apply_trained(params: TokenRoutingParams, model=None):
    model = tiny("llama") if model is None else model
    return ROUTING.apply(model, params, ids_for(params.calibration, model))


def routers(model) -> list[RoutedMLP]:
    return [layer.mlp for layer in model.model.layers if isinstance(layer.mlp, RoutedMLP)]


def passed(model, ids: torch.Tensor) -> list[torch.Tensor]:
    """bool [batch, seq] per routed layer: which tokens reached its MLP in one forward."""
    seen: list[torch.Tensor] = []
    hooks = [
        m.router.register_forward_hook(lambda mod, a, out, m=m: seen.append(out.squeeze(-1).float() > m.threshold))
        for m in routers(model)
    ]
    with torch.inference_mode():
        model(ids, use_cache=False)
    for hook in hooks:
        hook.remove()
    return seen


def test_cached_decoding_equals_a_full_forward_and_the_router_decides():
    model = apply_trained(trained(0.5, layers="all"))
    ids = torch.randint(97, (3, 40), generator=torch.Generator().manual_seed(11))
    cache = {cache_argument(model): DynamicCache(config=model.config)}
    with torch.inference_mode():
        steps = [model(ids[:, :17], use_cache=True, **cache).logits]
        for t in range(17, ids.shape[1]):
            steps.append(model(ids[:, t : t + 1], use_cache=True, **cache).logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), logits(model, ids), rtol=1e-4, atol=1e-4)
    shares = [float(p.float().mean()) for p in passed(model, ids)]
    assert all(0.0 < s < 1.0 for s in shares), shares  # scores, not a constant, decide


def test_training_is_repeatable_for_a_calibration_and_changes_with_it():
    def state(params):
        return [
            (m.threshold.item(), *(p.detach().clone() for p in m.router.parameters()))
            for m in routers(apply_trained(params))
        ]

    first, again = state(trained(0.75)), state(trained(0.75))
    other = state(trained(0.75, calibration=SMALL.model_copy(update={"seed": 1})))
    untrained = [
        p
        for m in routers(ROUTING.apply(tiny("llama"), TokenRoutingParams(sparsity=0.75)))
        for p in m.router.parameters()
    ]
    for a, b in zip(first, again, strict=True):
        assert a[0] == b[0] and all(torch.equal(x, y) for x, y in zip(a[1:], b[1:], strict=True))
    assert all(not torch.equal(a[1], b[1]) for a, b in zip(first, other, strict=True))
    assert all(not torch.equal(a[1], w) for a, w in zip(first, untrained, strict=True))


def test_the_trained_policy_needs_calibration_and_only_it_hashes_it():
    with pytest.raises(ValueError, match="calibration"):
        ROUTING.apply(tiny("llama"), trained(0.5), None)
    assert trained(0.5).calibration_needed() == SMALL
    seeded = TokenRoutingParams(sparsity=0.5)
    assert seeded.calibration_needed() is None
    assert seeded.model_dump(mode="json", exclude_defaults=True) == {"sparsity": 0.5}


@pytest.mark.parametrize("sparsity", [0.5, 0.875])
def test_capacity_is_exact_on_the_calibration_and_passes_the_declaration_check_elsewhere(sparsity):
    """The threshold is the sparsity quantile of each layer's calibration scores, so there it is exact;
    on other random ids (a tiny model's calibration is random ids) the traced M must match the
    Mixture-of-Depths declaration within harness.trace's tolerance."""
    calibration = Calibration(sequences=8, length=64)
    dense = tiny("llama")
    model = apply_trained(trained(sparsity, calibration), copy.deepcopy(dense))
    ids = ids_for(calibration, model)
    n = ids.numel()
    assert [int(p.sum()) for p in passed(model, ids)] == [round((1 - sparsity) * n)] * 3
    arch = architecture_of(dense.config, "tiny-llama", "tests/tiny_models.py")
    effects = resolve(SUBMISSION.effects, trained(sparsity, calibration), arch)
    _, mismatches = check_declaration(
        dense, model, arch, Scenario(phase=Phase.prefill, batch_size=2, seq_len=128), effects
    )
    assert mismatches == []


@pytest.mark.slow
def test_on_the_embedded_model_the_trained_router_beats_the_seeded_rule():
    """prunereg-mini, float32, default calibration (32 × 256 tokens of the train split), the submission's
    points (every second MLP, sparsity 0.5 and 0.875), held-out cross-entropy; the trained point's
    declaration check on held-out text passes. Numbers: README, "Faithful selections and calibration"."""
    from prunereg.harness.embedded import EVAL_SPLIT
    from prunereg.harness.models import load_model
    from prunereg.harness.quality import encode, mean_cross_entropy

    loaded = load_model("prunereg-mini", "cpu", torch.float32)
    tokenizer = loaded.tokenizer
    held_out = encode(tokenizer, EVAL_SPLIT)
    calibration = calibration_ids(Calibration(), tokenizer, tokenizer.vocab_size, 512)
    scenario = Scenario(phase=Phase.prefill, batch_size=1, seq_len=256)
    for point in SUBMISSION.adapter.operating_points:
        loss = {}
        for policy in ("seeded", "trained"):
            params = point.params.model_copy(update={"policy": policy})
            model = ROUTING.apply(copy.deepcopy(loaded.model), params, calibration if policy == "trained" else None)
            loss[policy] = mean_cross_entropy(model, held_out, tokenizer.bos_token_id)[0]
        _, mismatches = check_declaration(
            loaded.model,
            model,
            loaded.architecture,
            scenario,
            resolve(SUBMISSION.effects, params, loaded.architecture),
            tokenizer=tokenizer,
        )
        assert mismatches == [], point.name
        assert loss["trained"] < loss["seeded"], (point.name, loss)
