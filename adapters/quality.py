"""Quality: mean next-token cross-entropy on a held-out split, dense and pruned on the same tokens.

Cross-entropy (nats/token, lower is better) is the quality axis; its relative increase over dense
is the "quality loss" that methods on different base models can share. Perplexity is exp of it.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerBase


def eval_windows(tokenizer: PreTrainedTokenizerBase, text_file: Path, window: int, max_tokens: int) -> torch.Tensor:
    """Non-overlapping windows [n, window] of the split's first `max_tokens` tokens."""
    ids = tokenizer(text_file.read_text(encoding="utf-8"), add_special_tokens=False)["input_ids"][:max_tokens]
    n = len(ids) // window
    if n == 0:
        raise ValueError(f"{text_file} has fewer than {window} tokens")
    return torch.tensor(ids[: n * window]).view(n, window)


@torch.inference_mode()
def cross_entropy(model: PreTrainedModel, windows: torch.Tensor, batch_size: int = 16) -> float:
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for chunk in windows.split(batch_size):
        chunk = chunk.to(device)
        logits = model(chunk, use_cache=False).logits[:, :-1].float()
        targets = chunk[:, 1:]
        total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum").item()
        count += targets.numel()
    return total / count
