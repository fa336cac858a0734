"""Calibration batches: the token ids a faithful selection runs the dense model on.

Deterministic for a seed: the same `Calibration` picks the same windows of the same text every
time, so a selection (and so a pruned model) is reproducible. A random-weight catalog model has no
tokenizer and no meaningful activations; it gets seeded random ids of the same shape, which keeps
its shapes (and so its latency) those of the method while saying nothing about quality.
"""

from __future__ import annotations

import random

import torch
from transformers import PreTrainedTokenizerBase

from prunereg.spec.calibration import Calibration

from .embedded import CALIBRATION_SET


def calibration_ids(
    calibration: Calibration, tokenizer: PreTrainedTokenizerBase | None, vocab_size: int, max_positions: int
) -> torch.Tensor:
    """[sequences, length] token ids: BOS, then `length - 1` consecutive tokens of a seeded window of the set."""
    length = calibration.length_on(max_positions)
    if tokenizer is None:
        generator = torch.Generator().manual_seed(calibration.seed)
        return torch.randint(vocab_size, (calibration.sequences, length), generator=generator)
    text = CALIBRATION_SET.read_text(encoding="utf-8")
    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    span = length - 1
    if len(ids) < span + 1:
        raise ValueError(f"the calibration set has {len(ids)} tokens, fewer than one sequence of {length}")
    starts = random.Random(calibration.seed).choices(range(len(ids) - span), k=calibration.sequences)
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else ids[0]
    return torch.tensor([[bos, *ids[s : s + span]] for s in starts])
