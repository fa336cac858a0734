"""Write a pruned model as a checkpoint that `AutoModelForCausalLM.from_pretrained` loads with no prunereg code."""

from __future__ import annotations

from pathlib import Path

from huggingface_hub.errors import StrictDataclassError
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from prunereg.adapters.base import Adapter


class CheckpointRefused(Exception):
    """The pruned shapes differ per layer or per token, which no transformers config can express."""


def save_pruned(adapter: Adapter, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase | None, out: Path) -> Path:
    if adapter.checkpoint_refusal:
        raise CheckpointRefused(
            f"adapter '{adapter.name}' cannot be saved as a checkpoint: {adapter.checkpoint_refusal}"
        )
    plain = adapter.as_plain_model(model)
    try:
        type(plain.config).from_dict(plain.config.to_dict())
    except (ValueError, TypeError, StrictDataclassError) as err:
        reason = " ".join(str(err).split()[-16:])
        raise CheckpointRefused(f"this transformers version refuses the pruned config: {reason}") from None
    plain.save_pretrained(out)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    return out
