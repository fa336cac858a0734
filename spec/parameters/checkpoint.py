"""A pruned checkpoint brought by the submitter: which folder, which dense base, what it declares. No torch.

The point names data, never code: a local folder relative to the submission file's folder (the
one place that travels with the file; the working directory does not), checked here lexically
(`path`: no absolute path, no `..`, no hidden component, no hub id) and, when evaluated, again on
disk by adapters/checkpoint.py (symlinks may not lead out of the submission's folder). prunereg
never downloads anything: a hub id is refused with the command that downloads it. The numeric
fields exist for the submission's effects to refer to (`{"param": "sparsity"}`); what the
checkpoint really removes is traced and compared with them, never taken from them.
"""

from __future__ import annotations

import re

from pydantic import Field, field_validator

from ..catalog import models
from .base import AdapterParams

COMPONENT = r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}"
CHECKPOINT_PATH = rf"^{COMPONENT}(/{COMPONENT}){{0,15}}$"
"""Relative POSIX path of at most 16 components, each starting with a letter, digit, '_' or '-'."""
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+@")


def path_problem(path: str) -> str | None:
    """Why `path` cannot name a checkpoint folder relative to the submission file, or None."""
    if re.match(r"^[a-z][a-z0-9+.-]*://", path):
        return (
            f"'{path}' is a URL: prunereg never downloads; download it, then give the folder relative to the submission"
        )
    if HUB_ID.match(path):
        owner_name, _, revision = path.partition("@")
        return (
            f"'{path}' is a hub id: prunereg never downloads; run `hf download {owner_name} "
            f"--revision {revision or 'REVISION'} --local-dir DIR` and give DIR relative to the submission's folder"
        )
    if path.startswith(("/", "\\", "~")) or re.match(r"^[A-Za-z]:", path):
        return f"'{path}' is absolute: give the folder relative to the submission file's folder"
    if any(part in ("..", ".") for part in re.split(r"[/\\]", path)):
        return f"'{path}' has a '.' or '..' component: the checkpoint must lie inside the submission file's folder"
    if not re.match(CHECKPOINT_PATH, path):
        return f"'{path}' is not a plain relative folder path (letters, digits, '.', '_', '-' and '/' only)"
    return None


class CheckpointParams(AdapterParams):
    """A checkpoint folder pruned from a catalog model, and the fractions its submission's effects declare."""

    path: str = Field(
        min_length=1,
        max_length=400,
        description="the checkpoint folder (config.json and *.safetensors weights), relative to the folder of the "
        "submission file: components of letters, digits, '.', '_' and '-' (none starting with '.') joined by '/'; "
        "never absolute, never '..', never a hub id or URL (prunereg does not download)",
    )
    base: str = Field(
        min_length=1,
        max_length=64,
        pattern=r"^[a-z0-9][a-z0-9.-]*$",
        description="the catalog model the checkpoint was pruned from; evaluate runs it against that model only",
    )
    sparsity: float = Field(0.0, ge=0.0, le=0.95, description="declared fraction (e.g. of layers) for the effects")
    attention_sparsity: float = Field(0.0, ge=0.0, le=0.95, description="declared fraction of attention heads")
    mlp_sparsity: float = Field(0.0, ge=0.0, le=0.95, description="declared fraction of MLP channels")

    @field_validator("path", mode="before")
    @classmethod
    def _a_local_relative_folder(cls, path: object) -> object:
        problem = path_problem(path) if isinstance(path, str) else None
        if problem:
            raise ValueError(problem)
        return path

    @field_validator("base")
    @classmethod
    def _a_catalog_model(cls, base: str) -> str:
        if base not in models():
            raise ValueError(f"'{base}' is not a catalog model (known: {', '.join(models())})")
        return base
