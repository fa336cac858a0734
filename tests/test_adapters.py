"""The adapter table and lookup, plugins' registration rules, and the layer_drop and width families.

What every adapter must do (0 % = dense, shapes, counts, GQA, cached decoding) is in
test_adapter_contract.py; the other families have their own test_adapter_<family>.py.
"""

from __future__ import annotations

import copy
import subprocess
import sys
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
import torch
from tiny_models import ARCHITECTURES, IDS, logits, tiny

from prunereg.adapters import get_adapter
from prunereg.spec.adapters import (
    BUILT_IN,
    ENTRY_POINT_GROUP,
    AdapterRegistryError,
    AdapterRow,
    adapters,
    family_table,
    plugin_rows,
)
from prunereg.spec.parameters import LayerDropParams, WidthParams
from prunereg.spec.taxonomy import Family
from prunereg.spec.validate import validate_file

ROOT = Path(__file__).resolve().parents[1]
DUPLICATE = BUILT_IN[1]
"""A row that takes a built-in's name: a plugin naming it must be refused."""
NOT_A_ROW = "width"


def entry_point(name: str, attribute: str) -> EntryPoint:
    return EntryPoint(name=name, value=f"test_adapters:{attribute}", group=ENTRY_POINT_GROUP)


def test_every_row_resolves_to_its_adapter():
    assert [row.name for row in BUILT_IN] == list(adapters())  # no plugin in this environment
    for row in BUILT_IN:
        assert row.module.startswith("prunereg.adapters.")
        assert row.division == ("open" if row.name == "checkpoint" else "closed")  # weights prunereg did not prune
        assert get_adapter(row.name).name == row.name


def test_unknown_adapter_suggests_a_name():
    with pytest.raises(KeyError, match="did you mean 'layer_drop'"):
        get_adapter("layer_dorp")


def test_a_plugin_cannot_replace_a_registered_name_or_register_something_else():
    with pytest.raises(AdapterRegistryError, match="'layer_drop' is already registered; a plugin cannot replace it"):
        plugin_rows([entry_point("layer_drop", "DUPLICATE")], adapters())
    with pytest.raises(AdapterRegistryError, match="must name a prunereg.spec.adapters.AdapterRow"):
        plugin_rows([entry_point("width_two", "NOT_A_ROW")], adapters())
    with pytest.raises(AdapterRegistryError, match="the row's name 'layer_drop' must equal it"):
        plugin_rows([entry_point("other_name", "DUPLICATE")], adapters())
    with pytest.raises(AdapterRegistryError, match="cannot be loaded: ModuleNotFoundError"):
        plugin_rows([EntryPoint(name="gone", value="no_such_module:ROW", group=ENTRY_POINT_GROUP)], adapters())


def test_a_plugin_row_is_in_the_open_division():
    (row,) = plugin_rows([entry_point("layer_drop", "DUPLICATE")], [])
    assert row.provider == "test_adapters:DUPLICATE" and row.division == "open"
    assert AdapterRow("x", LayerDropParams, frozenset({Family.static_depth}), "m", ()).division == "closed"


def test_listing_adapters_imports_no_torch():
    probe = (
        "import sys; from prunereg.cli import app\n"
        "try:\n    app(['list', 'adapters'])\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'listing imported torch'\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    for row in BUILT_IN:
        assert row.name in result.stdout and row.params.__name__ in result.stdout


def test_the_readme_family_table_is_the_rendered_table():
    """Regenerate it with `prunereg list adapters --markdown` and paste it under "Submissions" in README.md."""
    slugs: dict[tuple[str, str], list[str]] = {}
    for path in sorted((ROOT / "submissions").glob("*.json")):
        submission, _ = validate_file(path)
        slugs.setdefault((submission.adapter.name, submission.family), []).append(submission.method.slug)
    table = family_table(slugs)
    assert sum(len(s) for s in slugs.values()) == len(list((ROOT / "submissions").glob("*.json")))
    readme = "".join(line.strip() + "\n" for line in (ROOT / "README.md").read_text().splitlines())
    assert table in readme


@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_layer_drop_equals_skipping_the_layers(model_type):
    model = tiny(model_type)
    params = LayerDropParams(sparsity=0.5, selection="explicit", layers=[1, 3, 4])
    pruned = get_adapter("layer_drop").apply(copy.deepcopy(model), params)
    skipped = copy.deepcopy(model)
    for i in (1, 3, 4):  # identity sublayers: the residual stream passes through unchanged
        skipped.model.layers[i].forward = lambda hidden_states, *a, **k: hidden_states
    torch.testing.assert_close(logits(pruned, IDS), logits(skipped, IDS))


@pytest.mark.parametrize("model_type", ARCHITECTURES)
@pytest.mark.parametrize("selection", ["magnitude", "seeded"])
def test_width_equals_dense_with_the_removed_units_zeroed(model_type, selection):
    """Physically sliced = masked: proves the slices of q/k/v/o and gate/up/down line up."""
    model = tiny(model_type)
    pruned = get_adapter("width").apply(
        copy.deepcopy(model), WidthParams(attention_sparsity=0.25, mlp_sparsity=0.5, selection=selection)
    )
    masked = copy.deepcopy(model)
    for dense_layer, small in zip(masked.model.layers, pruned.model.layers):
        attn = dense_layer.self_attn
        kept_q = _kept_rows(attn.q_proj.weight, small.self_attn.q_proj.weight)
        kept_kv = _kept_rows(attn.k_proj.weight, small.self_attn.k_proj.weight)
        with torch.no_grad():
            for proj, kept in ((attn.q_proj, kept_q), (attn.k_proj, kept_kv), (attn.v_proj, kept_kv)):
                proj.weight[~kept] = 0
                if proj.bias is not None:
                    proj.bias[~kept] = 0
            attn.o_proj.weight[:, ~kept_q] = 0
            mlp = dense_layer.mlp
            kept_c = _kept_rows(mlp.gate_proj.weight, small.mlp.gate_proj.weight)
            mlp.gate_proj.weight[~kept_c] = 0
            mlp.up_proj.weight[~kept_c] = 0
            mlp.down_proj.weight[:, ~kept_c] = 0
    torch.testing.assert_close(logits(pruned, IDS), logits(masked, IDS), rtol=1e-4, atol=1e-5)


def _kept_rows(dense_weight, small_weight) -> torch.Tensor:
    """Which rows of the dense weight survive in the sliced one (rows are unique random vectors)."""
    matches = (dense_weight[:, None, :] == small_weight[None, :, :]).all(-1)
    assert matches.sum() == small_weight.shape[0]
    return matches.any(1)


def test_width_refuses_heads_outside_whole_kv_groups():
    with pytest.raises(ValueError, match="not a whole number of groups"):
        get_adapter("width").apply(tiny("llama"), WidthParams(attention_sparsity=0.3, mlp_sparsity=0.0))
