"""Load the model an evaluation runs on: the embedded trained model, a catalog architecture with
random weights (latency does not depend on weight values), or a local checkpoint."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from prunereg.spec.catalog import ModelArchitecture, models
from prunereg.spec.jsonfile import JsonFileError, read_json

from .embedded import MODEL_DIR

ARCHITECTURE_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "max_position_embeddings",
    "rope_theta",
    "rms_norm_eps",
    "tie_word_embeddings",
    "attention_bias",
)


CONFIG_BYTES = 1_000_000
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model")
LOAD_ERRORS = (OSError, ValueError, KeyError, TypeError, AttributeError, RuntimeError, ImportError, SafetensorError)
"""What transformers and safetensors raise on a folder they cannot load (missing or corrupt files,
an unknown model type, shapes that do not match the config)."""


@dataclass
class LoadedModel:
    name: str
    architecture: ModelArchitecture
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase | None
    weights: str  # "trained" or "random"


def load_model(name_or_path: str, device: str, dtype: torch.dtype) -> LoadedModel:
    hf_logging.disable_progress_bar()
    catalog = models()
    if name_or_path in catalog:
        arch = catalog[name_or_path]
        if arch.embedded:
            return _from_checkpoint(MODEL_DIR, arch.name, device, dtype)
        config = AutoConfig.for_model(arch.model_type, **{f: getattr(arch, f) for f in ARCHITECTURE_FIELDS})
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        return LoadedModel(arch.name, arch, model.eval(), None, "random")
    path = Path(name_or_path)
    if not (path / "config.json").exists() and not (path / "config.json").is_symlink():
        known = ", ".join(catalog)
        raise ValueError(f"model '{name_or_path}' is neither a catalog name ({known}) nor a checkpoint folder")
    check_checkpoint(path)
    return _from_checkpoint(path, path.name, device, dtype)


def check_checkpoint(path: Path) -> None:
    """A local checkpoint folder is read like any input: its config.json through the safe JSON reader
    (a symlink is followed, since the Hugging Face cache links every file of a snapshot), and a
    tokenizer must be there, before transformers loads gigabytes of weights."""
    try:
        config = read_json(path / "config.json", CONFIG_BYTES, follow_symlinks=True)  # hub cache snapshots link
    except JsonFileError as err:
        raise ValueError(f"{path / 'config.json'}: {err}") from None
    if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
        raise ValueError(f"{path / 'config.json'}: no model_type: not a transformers model config")
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise ValueError(f"{path}: no tokenizer ({', '.join(TOKENIZER_FILES)}); save one with the model")


def _from_checkpoint(path: Path, name: str, device: str, dtype: torch.dtype) -> LoadedModel:
    """The checkpoint and its tokenizer; whatever transformers raises on a broken folder becomes one line."""
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True)
        model = model.to(device).eval()  # type: ignore[arg-type]  # @wraps(Module.to) hides its signature
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        architecture = architecture_of(model.config, name, str(path))
    except LOAD_ERRORS as err:
        reason = " ".join(str(err).split())[:300] or type(err).__name__
        raise ValueError(f"cannot load the checkpoint {path}: {reason}") from None
    return LoadedModel(name, architecture, model, tokenizer, "trained")


def architecture_of(config, name: str, source: str) -> ModelArchitecture:
    """The catalog description of a transformers config, so the cost model can price it."""
    values = {f: getattr(config, f, None) for f in ARCHITECTURE_FIELDS}
    values["head_dim"] = values["head_dim"] or config.hidden_size // config.num_attention_heads
    values["rope_theta"] = values["rope_theta"] or (getattr(config, "rope_parameters", None) or {}).get(
        "rope_theta", 10000.0
    )
    values["attention_bias"] = bool(values["attention_bias"])
    return ModelArchitecture(name=name, label=name, model_type=config.model_type, source=source, **values)
