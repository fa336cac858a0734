"""Bring your own pruned checkpoint: a point names a local folder pruned from a catalog model; prunereg loads it.

This is how a method whose algorithm prunereg does not implement enters with measured quality:
`apply` returns the loaded checkpoint instead of pruning the dense model, and evaluate then traces
its GEMMs against the submission's declared effects (a checkpoint that does not do what its
submission declares is refused, GEMM and both shapes named), times it and scores it like any point.

Decisions (a submission is data: nothing in it is imported, executed or fetched):
- Local folders only. A hub id ("owner/name@revision", a URL) is refused when the submission is
  validated, with the command that downloads it; prunereg never downloads, and no cache is consulted
  (a cache entry is a download made by someone else, and its snapshot files are links out of the folder).
- The path is relative to the submission file's folder, the one place that travels with the file
  (the working directory does not). Absolute paths, '.'/'..' and hidden components are refused
  lexically (spec/parameters/checkpoint.py); on disk the folder, resolved through any symbolic link,
  must still lie inside the submission's folder, and config.json, the index and every weights file
  must be regular files, not links.
- safetensors only: a pickle file (*.bin, *.pt, *.pth, *.pkl, *.ckpt) anywhere in the folder is
  refused before anything is read, since unpickling runs code. transformers loads with
  trust_remote_code=False and use_safetensors=True; a config that names remote code (auto_map) is refused.
- config.json, generation_config.json and the shard index go through the bounded JSON reader
  (spec/jsonfile.py); the model_type must be the dense base's, one of the catalog's (llama, qwen2, mistral). Weights may
  take at most what the dense base takes in float32, and every tensor must be one the config
  describes: no missing (randomly initialized), unexpected or mismatched tensor.
- The base: the point names a catalog model (`base`); evaluate runs it only against that model
  (evaluate.check_base), and here the checkpoint's config must match the dense model it is given:
  same model type, vocabulary, head size and tied embeddings, and no dimension larger.
- What is checked is shape, not provenance: that the weights were derived from the base (and not,
  say, trained on the held-out split) is the submitter's word; the sha256 of every weights file
  (`weights_record`, in the run's `checkpoint` record) makes it auditable.
- Recorded in `PointResult.checkpoint` (path, base, name, size and sha256 of each weights file): in the
  saved results file, printed by `prunereg evaluate`, stored with the run and shown on the method page.
  The submission names a path, not the bytes, so its spec hash does not change with them: re-pruning
  into the same folder and evaluating again finds the point "already in the registry" (ingesting a
  results file of other bytes stores a second run, since the hashes are in the measurement digest).
- Families: those a plain transformers config describes and prunereg traces as declared: static depth
  (whole layers), static width (KV groups, heads, MLP channels), static cross-layer (the hidden size),
  unstructured (zeros in the weights, masked dense like the built-in adapter). Not sublayer drop (no
  config has a layer without its attention or MLP), 2:4 (a checkpoint holds masked dense weights, while
  the built-in adapter runs sparse kernels on CUDA), low rank (factors need prunereg's modules), nor the
  dynamic families (they need code). No `unpruned` point in the table, since every point names a folder;
  the checkpoint of the dense model itself (`prunereg prune submissions/dense.json`) is that point.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from pathlib import Path
from typing import Any, cast

from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel
from transformers.utils import logging as hf_logging

from prunereg.spec.catalog import models
from prunereg.spec.jsonfile import JsonFileError, read_json
from prunereg.spec.parameters import CheckpointParams
from prunereg.spec.parameters.checkpoint import path_problem
from prunereg.spec.results import CheckpointRecord, WeightFile

from .base import Adapter

CONFIG_BYTES = 1_000_000
INDEX_BYTES = 10_000_000
GENERATION_CONFIG = "generation_config.json"
MAX_SHARDS = 256
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
SHARD_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}\.safetensors$")
SUPPORTED = frozenset(arch.model_type for arch in models().values())
SAME = ("model_type", "vocab_size", "head_dim", "tie_word_embeddings")
AT_MOST = ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads")
LOAD_ERRORS = (OSError, ValueError, KeyError, TypeError, AttributeError, RuntimeError, ImportError)


class CheckpointError(ValueError):
    """Why a checkpoint folder is refused, in one line naming the file."""


def checkpoint_folder(params: CheckpointParams, root: Path) -> Path:
    """The point's folder under `root` (the submission file's folder), refused when it leads outside it."""
    problem = path_problem(params.path)
    if problem:
        raise CheckpointError(problem)
    folder = Path(root) / params.path
    if not folder.exists():
        raise CheckpointError(
            f"no checkpoint folder {folder}: prunereg never downloads; write it there (e.g. `prunereg prune ... "
            f"--out {folder}`) or change the point's path (relative to {root})"
        )
    real = folder.resolve(strict=True)
    if not real.is_relative_to(Path(root).resolve(strict=True)):
        raise CheckpointError(f"{folder} leads out of the submission's folder {root} through a symbolic link")
    if not real.is_dir():
        raise CheckpointError(f"{folder} is not a folder")
    return real


def _regular(path: Path) -> Path:
    try:
        mode = os.lstat(path).st_mode
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read: {err.strerror or err}") from None
    if not stat.S_ISREG(mode):
        kind = "a symbolic link" if stat.S_ISLNK(mode) else "not a regular file"
        raise CheckpointError(f"{path} is {kind}: a checkpoint folder holds its own files")
    return path


def _json(path: Path, max_bytes: int) -> dict:
    try:
        document = read_json(path, max_bytes)
    except JsonFileError as err:
        raise CheckpointError(f"{path}: {err}") from None
    if not isinstance(document, dict):
        raise CheckpointError(f"{path}: not a JSON object")
    return document


def weight_files(folder: Path) -> list[Path]:
    """The *.safetensors files the checkpoint loads; a pickle file anywhere in the folder is refused first."""
    pickles = sorted(p.name for p in folder.iterdir() if p.name.lower().endswith(PICKLE_SUFFIXES))
    if pickles:
        raise CheckpointError(
            f"{folder / pickles[0]}: pickle weights run code when loaded; save the checkpoint as safetensors "
            "(save_pretrained's default) and remove the pickle files"
        )
    index = folder / "model.safetensors.index.json"
    if os.path.lexists(index):
        weight_map = _json(_regular(index), INDEX_BYTES).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{index}: no weight_map")
        names = sorted({str(name) for name in weight_map.values()})
        if len(names) > MAX_SHARDS or not all(SHARD_NAME.match(name) for name in names):
            raise CheckpointError(f"{index}: the weight_map names at most {MAX_SHARDS} *.safetensors files in it")
    elif os.path.lexists(folder / "model.safetensors"):
        names = ["model.safetensors"]
    else:
        raise CheckpointError(f"{folder}: no model.safetensors (nor model.safetensors.index.json)")
    return [_regular(folder / name) for name in names]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_record(params: CheckpointParams, root: Path) -> CheckpointRecord:
    """The point's checkpoint as the run records it: its path, its base and every weights file's sha256."""
    files = weight_files(checkpoint_folder(params, root))
    return CheckpointRecord(
        path=params.path, base=params.base,
        files=[WeightFile(name=f.name, size=f.stat().st_size, sha256=_sha256(f)) for f in files],
    )  # fmt: skip


def checked_config(folder: Path, dense: PreTrainedModel):
    """The checkpoint's transformers config, once it is known to describe a model pruned from `dense`."""
    where = folder / "config.json"
    document = _json(_regular(where), CONFIG_BYTES)
    model_type = document.pop("model_type", None)
    if model_type not in SUPPORTED:
        raise CheckpointError(f"{where}: model_type {model_type!r} is not one of {', '.join(sorted(SUPPORTED))}")
    if "auto_map" in document:
        raise CheckpointError(f"{where}: auto_map names remote code, which prunereg never runs")
    try:
        config = AutoConfig.for_model(model_type, **document)
    except LOAD_ERRORS as err:
        raise CheckpointError(f"{where}: {' '.join(str(err).split())[:200]}") from None
    base = dense.config

    def value(cfg, field: str):
        found = getattr(cfg, field, None)
        return cfg.hidden_size // cfg.num_attention_heads if field == "head_dim" and found is None else found

    for field in SAME:
        if value(config, field) != value(base, field):
            raise CheckpointError(
                f"{where}: {field} {value(config, field)!r} differs from the base model's {value(base, field)!r}: "
                "not pruned from it"
            )
    for field in AT_MOST:
        if not isinstance(value(config, field), int) or value(config, field) > value(base, field):
            raise CheckpointError(
                f"{where}: {field} {value(config, field)!r} exceeds the base model's {value(base, field)!r}: "
                "not pruned from it"
            )
    return config


class CheckpointAdapter(Adapter[CheckpointParams]):
    name = "checkpoint"

    def apply(
        self, model: PreTrainedModel, params: CheckpointParams, calibration=None, folder: Path | None = None
    ) -> PreTrainedModel:
        """The checkpoint at `params.path` under `folder` (the submission file's folder), on `model`'s device and
        dtype; `model`, the dense base, is only read, never modified."""
        if folder is None:
            raise CheckpointError("a checkpoint's path is relative to its submission file's folder: pass `folder`")
        where = checkpoint_folder(params, folder)
        files = weight_files(where)
        config = checked_config(where, model)
        if os.path.lexists(where / GENERATION_CONFIG):  # transformers reads it too: bounded and regular first
            _json(_regular(where / GENERATION_CONFIG), CONFIG_BYTES)
        dense_bytes = 4 * sum(p.numel() for p in model.parameters())
        size = sum(f.stat().st_size for f in files)
        if size > dense_bytes + (1 << 20):
            raise CheckpointError(
                f"{where}: {size} bytes of weights, more than the base model in float32 ({dense_bytes})"
            )
        hf_logging.disable_progress_bar()
        try:
            loaded, info = cast(
                "tuple[PreTrainedModel, dict[str, Any]]",
                AutoModelForCausalLM.from_pretrained(
                    where, config=config, dtype=model.dtype, local_files_only=True, trust_remote_code=False,
                    use_safetensors=True, output_loading_info=True,
                ),
            )  # fmt: skip
        except LOAD_ERRORS as err:
            raise CheckpointError(f"cannot load the checkpoint {where}: {' '.join(str(err).split())[:300]}") from None
        for kind in ("missing_keys", "unexpected_keys", "mismatched_keys"):
            keys = sorted(str(key) for key in info.get(kind) or ())
            if keys:
                raise CheckpointError(
                    f"{where}: {kind.replace('_', ' ')} between the weights and config.json: {', '.join(keys[:3])}"
                    + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")
                )
        device = next(model.parameters()).device
        return loaded.to(device).eval()  # type: ignore[arg-type]  # @wraps(Module.to) hides its signature


ADAPTER = CheckpointAdapter()
