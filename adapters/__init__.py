"""Adapters turn a spec's operating point into a pruned transformers model; the harness measures it.

Which adapters exist, and which module implements each, is the table in spec/adapters.py (built-in
rows and those that installed packages register); this package holds the built-in implementations.
Importing it does not import torch: `get_adapter` imports an adapter's module when it is asked for.
"""

from __future__ import annotations

import difflib
import importlib

from prunereg.spec.adapters import adapters

from .base import Adapter


def get_adapter(name: str) -> Adapter:
    """The adapter registered under `name`; an unknown name gets a 'did you mean'."""
    rows = adapters()
    if name not in rows:
        hint = difflib.get_close_matches(name, rows, n=1)
        raise KeyError(f"unknown adapter '{name}'" + (f"; did you mean '{hint[0]}'?" if hint else ""))
    module = rows[name].module
    adapter = getattr(importlib.import_module(module), "ADAPTER", None)
    if not isinstance(adapter, Adapter) or adapter.name != name:
        raise TypeError(f"module {module} of adapter '{name}' must define ADAPTER, an Adapter named '{name}'")
    return adapter
