"""The adapter table: every adapter a submission can name, each registered once, here. No torch.

A row names the adapter, its parameter model (spec/parameters/, which also holds its fit
check), the families it realizes, the module that implements it and example points for the
contract tests. The JSON Schema, the semantic checks, `prunereg list adapters`,
`prunereg.adapters.get_adapter` and the README's family table are all read off this table.

Packages add adapters through the entry-point group `prunereg.adapters`: each entry point names
an `AdapterRow`, loaded from a module that must not import torch. A submission still only names an
adapter; which code runs is decided by what the operator installed, never by the submission.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from functools import cache
from importlib.metadata import EntryPoint, entry_points
from typing import Literal

from .calibration import Calibration
from .parameters import (
    AdapterParams,
    CheckpointParams,
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
from .taxonomy import FAMILY_LABELS, Family

ENTRY_POINT_GROUP = "prunereg.adapters"
ADAPTER_NAME = re.compile(r"^[a-z][a-z0-9_]{1,39}$")
Division = Literal["closed", "open"]


@dataclass(frozen=True)
class AdapterRow:
    """One adapter, as the whole of prunereg sees it."""

    name: str
    params: type[AdapterParams]
    families: frozenset[Family]
    module: str
    """Dotted path of the module whose `ADAPTER` applies it; imported only by `get_adapter`."""
    examples: tuple[AdapterParams, ...]
    """Points every contract test runs on tiny Llama, Qwen2 and Mistral models (8 heads, 4 KV groups, 6 layers)."""
    unpruned: AdapterParams | None = None
    """A point that removes nothing, so the pruned model must equal the dense one; None if there is none."""
    max_operating_points: int = 32
    """At most this many points per submission (checks.py; the dense baseline has exactly one)."""
    provider: str = "prunereg"
    """The distribution that registers the row: prunereg itself, or the plugin package."""

    @property
    def division(self) -> Division:
        """MLPerf's divisions (DESIGN.md, spec/division.py): built-in adapters are closed, plugins and a
        submitted `checkpoint` (weights prunereg did not prune) open."""
        return "closed" if self.provider == "prunereg" and self.name != "checkpoint" else "open"


SMALL_CALIBRATION = Calibration(sequences=4, length=32)
"""Enough calibration ids for an example point's selection on a tiny model, and quick."""


def _built_in(name: str, params: type[AdapterParams], family: Family, module: str, *examples, **more) -> AdapterRow:
    return AdapterRow(name, params, frozenset({family}), f"prunereg.adapters.{module}", tuple(examples), **more)


BUILT_IN: tuple[AdapterRow, ...] = (
    _built_in(
        "dense", DenseParams, Family.dense, "dense", DenseParams(), unpruned=DenseParams(), max_operating_points=1
    ),
    _built_in(
        "layer_drop",
        LayerDropParams,
        Family.static_depth,
        "layer_drop",
        LayerDropParams(sparsity=0.5),
        LayerDropParams(sparsity=0.34, selection="seeded", seed=4),
        LayerDropParams(sparsity=0.5, selection="block_influence"),
        unpruned=LayerDropParams(sparsity=0.0),
    ),
    _built_in(
        "sublayer_drop",
        SublayerDropParams,
        Family.static_depth,
        "sublayer_drop",
        SublayerDropParams(sparsity=0.5, selection="explicit", layers=[0, 3, 4], sublayer="attention"),
        SublayerDropParams(sparsity=0.5, sublayer="mlp"),
        SublayerDropParams(sparsity=0.5, selection="block_influence", sublayer="attention"),
        unpruned=SublayerDropParams(sparsity=0.0, sublayer="attention"),
    ),
    _built_in(
        "width",
        WidthParams,
        Family.static_width,
        "width",
        WidthParams(attention_sparsity=0.5, mlp_sparsity=0.25),
        WidthParams(attention_sparsity=0.25, mlp_sparsity=0.5, selection="seeded", seed=1),
        WidthParams(attention_sparsity=0.5, mlp_sparsity=0.25, selection="taylor", calibration=SMALL_CALIBRATION),
        WidthParams(attention_sparsity=0.25, mlp_sparsity=0.5, selection="flap", calibration=SMALL_CALIBRATION),
        unpruned=WidthParams(attention_sparsity=0.0, mlp_sparsity=0.0),
    ),
    _built_in(
        "hidden_slice",
        HiddenSliceParams,
        Family.static_cross_layer,
        "hidden_slice",
        HiddenSliceParams(sparsity=0.25),
        HiddenSliceParams(sparsity=0.5, selection="seeded", seed=3),
        HiddenSliceParams(sparsity=0.25, selection="pca", calibration=SMALL_CALIBRATION),
        HiddenSliceParams(sparsity=0.25, selection="slicegpt", calibration=SMALL_CALIBRATION),
        unpruned=HiddenSliceParams(sparsity=0.0),
    ),
    _built_in(
        "semi_structured_2_4",
        SemiStructuredParams,
        Family.static_k_2_4,
        "semi_structured",
        SemiStructuredParams(),
        SemiStructuredParams(projections=["qkv_proj", "gate_up_proj"]),
        SemiStructuredParams(selection="wanda"),
        SemiStructuredParams(selection="sparsegpt", projections=["o_proj", "down_proj"]),
    ),
    _built_in(
        "low_rank",
        LowRankParams,
        Family.static_k_low_rank,
        "low_rank",
        LowRankParams(sparsity=0.5),
        LowRankParams(sparsity=0.4, projections=["qkv_proj", "down_proj"]),
        LowRankParams(sparsity=0.4, selection="svd_llm", calibration=SMALL_CALIBRATION),
        LowRankParams(
            sparsity=0.5, selection="asvd", projections=["o_proj", "gate_up_proj"], calibration=SMALL_CALIBRATION
        ),
        unpruned=LowRankParams(sparsity=0.0),
    ),
    _built_in(
        "token_routing",
        TokenRoutingParams,
        Family.dynamic_depth,
        "token_routing",
        TokenRoutingParams(sparsity=0.5),
        TokenRoutingParams(sparsity=0.875, layers="all", router_rank=8, seed=9),
        TokenRoutingParams(sparsity=0.75, policy="trained", router_rank=4, calibration=SMALL_CALIBRATION),
        unpruned=TokenRoutingParams(sparsity=0.0, layers="all", router_rank=4),
    ),
    _built_in(
        "sparse_attention",
        SparseAttentionParams,
        Family.dynamic_attention,
        "sparse_attention",
        SparseAttentionParams(sparsity=0.6, block_size=16, seed=3),
        SparseAttentionParams(sparsity=0.75, block_size=16, sink_blocks=0, local_blocks=2),
        SparseAttentionParams(sparsity=0.5, block_size=16, sink_blocks=0, policy="estimated"),
        unpruned=SparseAttentionParams(sparsity=0.0, block_size=16),
    ),
    _built_in(
        "unstructured",
        UnstructuredParams,
        Family.unstructured,
        "unstructured",
        UnstructuredParams(sparsity=0.5),
        UnstructuredParams(sparsity=0.9, projections=["qkv_proj", "down_proj"]),
        UnstructuredParams(sparsity=0.5, selection="wanda"),
        UnstructuredParams(sparsity=0.6, selection="sparsegpt", projections=["qkv_proj", "gate_up_proj"]),
        unpruned=UnstructuredParams(sparsity=0.0),
    ),
    AdapterRow(
        "checkpoint",
        CheckpointParams,
        frozenset({Family.static_depth, Family.static_width, Family.static_cross_layer, Family.unstructured}),
        "prunereg.adapters.checkpoint",
        (),  # a point names a folder on disk: tests/test_adapter_checkpoint.py writes and checks real ones
    ),
)


class AdapterRegistryError(ValueError):
    """An installed plugin's row is malformed or takes a name that is already registered."""


def plugin_rows(found: Iterable[EntryPoint], taken: Iterable[str]) -> list[AdapterRow]:
    """The rows that entry points register; a plugin never replaces a name in `taken` (lm-eval's rule)."""
    names = set(taken)
    rows = []
    for point in found:
        provider = point.dist.name if point.dist is not None else point.value
        where = f"entry point '{point.name}' of {provider} (group {ENTRY_POINT_GROUP})"
        try:
            row = point.load()
        except Exception as err:  # a broken plugin must say which one, then stop everything
            raise AdapterRegistryError(f"{where} cannot be loaded: {type(err).__name__}: {err}") from err
        if not isinstance(row, AdapterRow):
            raise AdapterRegistryError(f"{where} must name a prunereg.spec.adapters.AdapterRow")
        if row.name != point.name or not ADAPTER_NAME.match(row.name):
            raise AdapterRegistryError(
                f"{where}: the row's name '{row.name}' must equal it and match {ADAPTER_NAME.pattern}"
            )
        if row.name in names:
            raise AdapterRegistryError(
                f"{where}: adapter '{row.name}' is already registered; a plugin cannot replace it"
            )
        if not issubclass(row.params, AdapterParams) or not row.families or not row.examples:
            raise AdapterRegistryError(f"{where}: needs an AdapterParams model, a family and example points")
        names.add(row.name)
        rows.append(replace(row, provider=provider))
    return rows


@cache
def adapters() -> dict[str, AdapterRow]:
    """Every adapter a submission can name here: the built-ins, then those of installed plugins."""
    built_in = {row.name: row for row in BUILT_IN}
    plugins = plugin_rows(entry_points(group=ENTRY_POINT_GROUP), built_in)
    return built_in | {row.name: row for row in plugins}


def family_table(slugs: dict[tuple[str, str], list[str]]) -> str:
    """The README's family table (Markdown): per family its built-in adapters and the shipped submissions using them.

    `slugs` maps (adapter name, family) to the slugs of the submissions that declare them: an adapter of
    several families (`checkpoint`) lists a submission only under the family it declares.
    """
    lines = ["| family | adapter | parameters | submissions |", "|---|---|---|---|"]
    for family, label in FAMILY_LABELS.items():
        rows = [row for row in BUILT_IN if family in row.families]
        cell = ", ".join(f"`{row.name}`" for row in rows)
        params = ", ".join(f"`{row.params.__name__}`" for row in rows)
        shipped = ", ".join(f"`{slug}`" for row in rows for slug in sorted(slugs.get((row.name, family), [])))
        lines.append(f"| {label} | {cell} | {params} | {shipped} |")
    return "\n".join(lines) + "\n"
