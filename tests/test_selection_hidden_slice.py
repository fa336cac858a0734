"""SliceGPT's selections for hidden_slice: fold the norms, rotate the residual stream by its PCA, slice.

'slicegpt' rotates per block with shortcut GEMMs between the bases, 'pca' once for the whole stream.
On tiny random models: removing nothing equals dense (computational invariance, random norm weights
and biases included), the rotation is orthogonal and sorted by variance, a stream that lives in the
kept directions loses nothing, the result is repeatable; 'pca' has the baselines' shapes, 'slicegpt'
adds two kept x kept shortcuts per layer, which the tracer checks against the declaration. On the
embedded model (slow): per-block rotation beats one rotation, which beats unrotated slicing.
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from tiny_models import ARCHITECTURES, IDS, logits, tiny
from transformers import AutoModelForCausalLM

from prunereg.adapters import get_adapter
from prunereg.adapters.hidden_slice import principal_directions, residual_covariance
from prunereg.harness.calibration import calibration_ids
from prunereg.harness.checkpoint import CheckpointRefused, save_pruned
from prunereg.harness.models import architecture_of
from prunereg.harness.quality import mean_cross_entropy
from prunereg.harness.trace import check_declaration
from prunereg.spec.calibration import Calibration
from prunereg.spec.catalog import Scenario
from prunereg.spec.effects import ResolvedEffect
from prunereg.spec.parameters import HiddenSliceParams

ADAPTER = get_adapter("hidden_slice")
SMALL = Calibration(sequences=4, length=32)


def calibration(seed: int = 0) -> torch.Tensor:
    return calibration_ids(SMALL.model_copy(update={"seed": seed}), None, 97, 128)


def pca(sparsity: float, selection: str = "pca") -> HiddenSliceParams:
    return HiddenSliceParams(sparsity=sparsity, selection=selection, calibration=SMALL)


ROTATIONS = ["pca", "slicegpt"]


def norms(model) -> list[torch.nn.Module]:
    inner = model.model
    return [n for layer in inner.layers for n in (layer.input_layernorm, layer.post_attention_layernorm)] + [inner.norm]


def with_norm_weights(model, seed: int = 0, final: float | None = None):
    """Random RMSNorm weights (a trained model's are not 1), so folding them is tested; `final`: uniform final norm."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for norm in norms(model):
            weight = norm.get_parameter("weight")
            weight.copy_(0.5 + torch.rand(weight.shape, generator=generator))
        if final is not None:
            model.model.norm.weight.fill_(final)
    return model


def tied(model):
    model.lm_head.weight = model.model.embed_tokens.weight
    model.config.tie_word_embeddings = True
    return model


def biased_llama():
    """Llama with biases on every projection: o_proj's and down_proj's write the residual stream."""
    model = tiny("llama", attention_bias=True, mlp_bias=True)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("bias"):
                parameter.normal_(std=0.1)
    return model


MODELS = {
    **{model_type: functools.partial(tiny, model_type) for model_type in ARCHITECTURES},
    "llama-biased": biased_llama,
}


@pytest.mark.parametrize("selection", ROTATIONS)
@pytest.mark.parametrize("name", MODELS)
def test_removing_nothing_equals_dense_after_folding_and_rotating(name, selection):
    """Computational invariance: the norms' weights folded in, every weight rotated, nothing sliced."""
    model = with_norm_weights(MODELS[name]())
    rotated = ADAPTER.apply(copy.deepcopy(model), pca(0.0, selection), calibration())
    torch.testing.assert_close(logits(rotated, IDS), logits(model, IDS), rtol=1e-4, atol=1e-4)
    assert not torch.equal(rotated.model.embed_tokens.weight, model.model.embed_tokens.weight)
    for norm in norms(rotated)[:-1]:
        assert torch.equal(norm.weight, torch.ones(64))


@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_tied_embeddings_stay_tied_and_exact_when_the_final_norm_is_uniform(model_type):
    model = tied(with_norm_weights(tiny(model_type), final=1.7))
    rotated = ADAPTER.apply(copy.deepcopy(model), pca(0.0), calibration())
    assert rotated.lm_head.weight is rotated.model.embed_tokens.weight
    torch.testing.assert_close(logits(rotated, IDS), logits(model, IDS), rtol=1e-4, atol=1e-4)
    sliced = ADAPTER.apply(copy.deepcopy(model), pca(0.25), calibration())
    assert sliced.lm_head.weight is sliced.model.embed_tokens.weight
    assert sliced.lm_head.weight.shape == (97, 48)


def test_a_tied_head_keeps_the_diagonal_of_the_rotated_final_norm_weight():
    """The one approximation: a tied lm_head cannot absorb diag(g), the final norm keeps diag(Qᵀ·diag(g)·Q)."""
    model = tied(with_norm_weights(tiny("llama")))
    ids = calibration()
    q = principal_directions(residual_covariance(model, ids))[:, :48]
    g = model.model.norm.weight.detach().double()
    sliced = ADAPTER.apply(copy.deepcopy(model), pca(0.25), ids)
    expected = (64 / 48) ** 0.5 * torch.diagonal(q.T @ torch.diag(g) @ q)
    torch.testing.assert_close(sliced.model.norm.weight.double(), expected, rtol=1e-6, atol=1e-6)


def test_the_rotation_is_orthogonal_and_sorted_by_variance():
    model, ids = with_norm_weights(tiny("qwen2")), calibration()
    covariance = residual_covariance(model, ids)
    assert covariance.dtype == torch.float64 and torch.allclose(covariance, covariance.T)
    q = principal_directions(covariance)
    torch.testing.assert_close(q.T @ q, torch.eye(64, dtype=torch.float64), rtol=0, atol=1e-10)
    rotated = q.T @ covariance @ q
    variances = torch.diagonal(rotated)
    torch.testing.assert_close(rotated, torch.diag(variances), rtol=0, atol=1e-8 * variances.max().item())
    assert torch.all(variances[:-1] >= variances[1:])
    assert torch.all(q[q.abs().argmax(dim=0), torch.arange(64)] > 0)  # signs fixed


def test_the_covariance_pools_the_input_of_every_block_and_the_final_norm():
    """With every block writing zero, each of the 2·layers + 1 inputs is the embedding output."""
    model, ids = tiny("mistral"), calibration()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
    embedded = model.model.embed_tokens.weight.detach().double()[ids.reshape(-1)]
    expected = (2 * 6 + 1) * embedded.T @ embedded
    torch.testing.assert_close(residual_covariance(model, ids), expected, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("selection", ROTATIONS)
@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_a_residual_stream_in_the_kept_directions_loses_nothing(model_type, selection):
    """Embeddings and every block's output in one 48-dimensional subspace: slicing 25 % after rotating is
    exact, while slicing channels without rotating is not. Embeddings of unit scale, as in a trained model, so
    the norm's eps (added to the mean over the kept directions, i.e. scaled by kept/hidden) stays negligible."""
    model = with_norm_weights(tiny(model_type))
    basis, _ = torch.linalg.qr(torch.randn(64, 48, generator=torch.Generator().manual_seed(2)))
    projector = basis @ basis.T
    with torch.no_grad():
        model.model.embed_tokens.weight.copy_(50 * model.model.embed_tokens.weight @ projector)
        for layer in model.model.layers:
            for out in (layer.self_attn.o_proj, layer.mlp.down_proj):
                out.weight.copy_(projector @ out.weight)
    sliced = ADAPTER.apply(copy.deepcopy(model), pca(0.25, selection), calibration())
    torch.testing.assert_close(logits(sliced, IDS), logits(model, IDS), rtol=1e-4, atol=1e-4)
    unrotated = ADAPTER.apply(copy.deepcopy(model), HiddenSliceParams(sparsity=0.25))
    assert (logits(unrotated, IDS) - logits(model, IDS)).abs().max() > 1e-2


@pytest.mark.parametrize("selection", ROTATIONS)
@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_repeatable_for_the_same_calibration_and_not_for_another(model_type, selection):
    model = with_norm_weights(tiny(model_type))
    first = ADAPTER.apply(copy.deepcopy(model), pca(0.25, selection), calibration(seed=3))
    second = ADAPTER.apply(copy.deepcopy(model), pca(0.25, selection), calibration(seed=3))
    torch.testing.assert_close(logits(first, IDS), logits(second, IDS), rtol=0, atol=0)
    other = ADAPTER.apply(copy.deepcopy(model), pca(0.25, selection), calibration(seed=4))
    assert not torch.equal(logits(first, IDS), logits(other, IDS))


def test_pca_refuses_to_run_without_calibration():
    with pytest.raises(ValueError, match="calibration data"):
        ADAPTER.apply(tiny("llama"), pca(0.25))


def test_the_parameter_model_declares_calibration_only_for_the_rotations():
    assert pca(0.25).calibration_needed() == pca(0.25, "slicegpt").calibration_needed() == SMALL
    assert HiddenSliceParams(sparsity=0.25, selection="pca").calibration_needed() == Calibration()
    for selection in ("magnitude", "seeded"):
        baseline = HiddenSliceParams(sparsity=0.25, selection=selection)
        assert baseline.calibration_needed() is None
        assert "calibration" not in baseline.model_dump(mode="json", exclude_defaults=True)  # hashes unchanged
    assert HiddenSliceParams(sparsity=0.25).selection == "magnitude"


@pytest.mark.parametrize("model_type", ARCHITECTURES)
@pytest.mark.parametrize("tie", [False, True])
def test_shapes_config_and_dtypes_are_those_of_magnitude(model_type, tie):
    model = tiny(model_type)
    model = tied(model) if tie else model
    rotated = ADAPTER.apply(copy.deepcopy(model), pca(0.25), calibration())
    magnitude = ADAPTER.apply(copy.deepcopy(model), HiddenSliceParams(sparsity=0.25))
    shapes = {name: (p.shape, p.dtype) for name, p in magnitude.named_parameters()}
    assert {name: (p.shape, p.dtype) for name, p in rotated.named_parameters()} == shapes
    assert rotated.config.to_dict() == magnitude.config.to_dict()
    arch = architecture_of(model.config, f"tiny-{model_type}", "tests/tiny_models.py")
    assert architecture_of(rotated.config, f"tiny-{model_type}", "tests/tiny_models.py") == pca(
        0.25
    ).architecture_after(arch)


def test_a_bfloat16_model_stays_bfloat16():
    model = with_norm_weights(tiny("llama")).to(torch.bfloat16)
    sliced = ADAPTER.apply(model, pca(0.25), calibration())
    assert {p.dtype for p in sliced.parameters()} == {torch.bfloat16}
    assert torch.isfinite(logits(sliced, IDS)).all()


@pytest.mark.parametrize("tie", [False, True])
def test_the_rotated_model_is_an_ordinary_checkpoint(tmp_path, tie):
    model = with_norm_weights(tiny("qwen2"))
    pruned = ADAPTER.apply(tied(model) if tie else model, pca(0.25), calibration())
    save_pruned(ADAPTER, pruned, None, tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    torch.testing.assert_close(logits(reloaded, IDS), logits(pruned, IDS))


@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_per_block_rotations_add_two_orthogonal_shortcuts_per_layer_and_untie_the_head(model_type):
    """With nothing sliced each shortcut is Q_inᵀ·Q_out, orthogonal; sliced, it is kept x kept."""
    model = tied(with_norm_weights(tiny(model_type)))
    whole = ADAPTER.apply(copy.deepcopy(model), pca(0.0, "slicegpt"), calibration())
    sliced = ADAPTER.apply(copy.deepcopy(model), pca(0.25, "slicegpt"), calibration())
    for layer in whole.model.layers:
        for shortcut in (layer.attn_shortcut, layer.mlp_shortcut):
            w = shortcut.weight.double()
            torch.testing.assert_close(w @ w.T, torch.eye(64, dtype=torch.float64), rtol=0, atol=1e-5)
            assert not torch.allclose(w, torch.eye(64, dtype=torch.float64), atol=1e-3)  # the basis changed
    for layer in sliced.model.layers:
        assert layer.attn_shortcut.weight.shape == layer.mlp_shortcut.weight.shape == (48, 48)
    assert sliced.lm_head.weight is not sliced.model.embed_tokens.weight
    assert sliced.config.tie_word_embeddings is False and sliced.lm_head.weight.shape == (97, 48)


def declared_slicegpt(shortcuts: bool):
    """slicegpt.json's effects at 25 %, with or without the shortcut_rotation GEMM."""
    gemms = ["qkv_proj", "o_proj", "gate_up_proj", "down_proj", "lm_head"] + (
        ["shortcut_rotation"] * 2 if shortcuts else []
    )
    dimensions = ["K", "N", "K", "N", "K"] + (["K", "N"] if shortcuts else [])
    return [
        ResolvedEffect(gemm=g, dimension=d, mode="static", granularity="hidden", fraction=0.25)
        for g, d in zip(gemms, dimensions)
    ]


def test_the_tracer_checks_the_shortcut_gemms_against_the_declaration():
    model = with_norm_weights(tiny("llama"))
    sliced = ADAPTER.apply(copy.deepcopy(model), pca(0.25, "slicegpt"), calibration())
    arch = architecture_of(model.config, "tiny-llama", "tests/tiny_models.py")
    scenario = Scenario(phase="prefill", batch_size=1, seq_len=64)
    table, mismatches = check_declaration(model, sliced, arch, scenario, declared_slicegpt(shortcuts=True))
    assert mismatches == []
    (row,) = [r for r in table if r.gemm == "shortcut_rotation"]
    assert row.added and row.observed == pytest.approx(1.0)
    assert [(t.m, t.n, t.k, t.count) for t in row.pruned] == [(64, 48, 48, 2 * 6)]
    _, undeclared = check_declaration(model, sliced, arch, scenario, declared_slicegpt(shortcuts=False))
    assert undeclared == ["shortcut_rotation: the pruned model runs 64×48×48 ×12, which the dense model does not"]
    single = ADAPTER.apply(copy.deepcopy(model), pca(0.25), calibration())
    _, missing = check_declaration(model, single, arch, scenario, declared_slicegpt(shortcuts=True))
    assert len(missing) == 1 and missing[0].startswith("shortcut_rotation: declared added")


def test_the_per_block_rotation_is_no_plain_checkpoint(tmp_path):
    sliced = ADAPTER.apply(tiny("llama"), pca(0.25, "slicegpt"), calibration())
    with pytest.raises(CheckpointRefused, match="shortcut rotations"):
        save_pruned(ADAPTER, sliced, None, tmp_path / "out")


@pytest.mark.slow
@pytest.mark.parametrize("sparsity", [0.1, 0.25, 0.4])
def test_rotated_slicing_beats_unrotated_slicing_on_the_embedded_model(embedded_held_out, sparsity):
    """The issue's claim, at submissions/slicegpt.json's point (slice-25) and at 10 % and 40 %; and SliceGPT's
    per-block rotations beat one rotation for the whole stream."""
    model, ids, held_out, bos = embedded_held_out

    def cross_entropy(selection: str) -> float:
        params = HiddenSliceParams(sparsity=sparsity, selection=selection)
        pruned = ADAPTER.apply(copy.deepcopy(model), params, ids if params.calibration_needed() else None)
        return mean_cross_entropy(pruned, held_out, bos)[0]

    rotated = cross_entropy("pca")
    assert cross_entropy("slicegpt") < rotated
    for baseline in ("magnitude", "seeded"):
        assert rotated < cross_entropy(baseline), baseline
