"""Quality: mean next-token cross-entropy on a held-out split, dense and pruned on the same tokens.

Cross-entropy (nats/token, lower is better) is the quality axis; its relative increase over dense
is the "quality loss" that methods on different base models can share. Perplexity is exp of it.
Protocol (the embedded model's card uses the same function): encode the text without special
tokens, cut it into consecutive chunks of `seq_len - 1` tokens, put BOS before each, and average
the cross-entropy of every chunk token given BOS and the chunk tokens before it.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerBase

SEQ_LEN = 256


def encode(tokenizer: PreTrainedTokenizerBase, text_file: Path) -> torch.Tensor:
    text = text_file.read_text(encoding="utf-8")
    return torch.tensor(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])


@torch.inference_mode()
def mean_cross_entropy(
    model: PreTrainedModel, ids: torch.Tensor, bos_id: int, seq_len: int = SEQ_LEN, batch_size: int = 64
) -> tuple[float, int]:
    """(mean cross-entropy in nats, tokens scored) under the protocol above."""
    device = next(model.parameters()).device
    chunks = list(ids.split(seq_len - 1))
    full, last = (chunks[:-1], chunks[-1:]) if len(chunks[-1]) < seq_len - 1 else (chunks, [])
    batches = [full[i : i + batch_size] for i in range(0, len(full), batch_size)] + ([last] if last else [])
    total, count = 0.0, 0
    for group in batches:
        body = torch.stack(group)
        batch = torch.cat([torch.full((len(group), 1), bos_id), body], dim=1).to(device)
        logits = model(input_ids=batch, use_cache=False).logits[:, :-1].float()
        total += F.cross_entropy(logits.reshape(-1, logits.size(-1)), batch[:, 1:].reshape(-1), reduction="sum").item()
        count += body.numel()
    return total / count, count
