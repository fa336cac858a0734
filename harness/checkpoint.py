"""Write a pruned model as a checkpoint that `AutoModelForCausalLM.from_pretrained` loads with no prunereg code.

The checkpoint folder is written fresh and replaces an earlier one whole (prunereg.outputs), so
shards of a larger earlier model never stay behind next to the new ones.
"""

from __future__ import annotations

from pathlib import Path

from huggingface_hub.errors import StrictDataclassError
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from prunereg.adapters.base import Adapter
from prunereg.outputs import CHECKPOINT_MARKER, check_output, replaced_folder


class CheckpointRefused(Exception):
    """The pruned shapes differ per layer or per token, which no transformers config can express."""


def save_pruned(
    adapter: Adapter,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase | None,
    out: Path,
    force: bool = False,
) -> Path:
    """Raises CheckpointRefused for a model no config describes, prunereg.outputs.OutputRefused for an
    `out` that is a link, a file or a folder prunereg did not write (unless `force`)."""
    check_output(Path(out), CHECKPOINT_MARKER, force)
    refusal = adapter.refusal(model)
    if refusal:
        raise CheckpointRefused(f"adapter '{adapter.name}' cannot be saved as a checkpoint: {refusal}")
    plain = adapter.as_plain_model(model)
    try:
        type(plain.config).from_dict(plain.config.to_dict())
    except (ValueError, TypeError, StrictDataclassError) as err:
        reason = " ".join(str(err).split()[-16:])
        raise CheckpointRefused(f"this transformers version refuses the pruned config: {reason}") from None
    with replaced_folder(Path(out), CHECKPOINT_MARKER, force) as fresh:
        plain.save_pretrained(fresh)
        if tokenizer is not None:
            tokenizer.save_pretrained(fresh)
    return out
