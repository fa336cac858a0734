"""Adapters turn a spec's operating point into a pruned transformers model; the harness measures it.

Every built-in adapter is registered here, once, by name; a submission can only name one of
these (the schema's `adapter.name`). Importing this package does not import torch.
"""

from __future__ import annotations

import difflib
import importlib

from .base import Adapter

ADAPTER_MODULES: dict[str, str] = {
    "dense": "dense",
    "layer_drop": "layer_drop",
    "sublayer_drop": "sublayer_drop",
    "width": "width",
    "hidden_slice": "hidden_slice",
    "semi_structured_2_4": "semi_structured",
    "low_rank": "low_rank",
    "token_routing": "token_routing",
    "sparse_attention": "sparse_attention",
    "unstructured": "unstructured",
}


def get_adapter(name: str) -> Adapter:
    """The adapter registered under `name`; an unknown name gets a 'did you mean'."""
    if name not in ADAPTER_MODULES:
        hint = difflib.get_close_matches(name, ADAPTER_MODULES, n=1)
        raise KeyError(f"unknown adapter '{name}'" + (f"; did you mean '{hint[0]}'?" if hint else ""))
    adapter = importlib.import_module(f"{__name__}.{ADAPTER_MODULES[name]}").ADAPTER
    if not isinstance(adapter, Adapter) or adapter.name != name:
        raise TypeError(f"module for '{name}' must define ADAPTER, an Adapter named '{name}'")
    return adapter
