"""Train the embedded default model: a byte-level BPE tokenizer and a small Llama.

    python tools/embedded/train.py [--device cuda|cpu] [--out DIR]

Everything is seeded and run with deterministic kernels, so one device, torch
version and seed give the same weights every time (CPU and GPU differ in the
last bits of float arithmetic, and so in the weights they produce). The corpus
comes from ``corpus.py`` beside this file. Selection of the checkpoint uses the
validation split only; ``eval.txt`` is touched once, at the end, to report the
numbers in ``card.json``.

Evaluation protocol (``prunereg.harness.quality.mean_cross_entropy``, shared with the harness): encode
the text without special tokens, cut it into consecutive chunks of
``SEQ_LEN - 1`` tokens, prefix each chunk with BOS, and average the
cross-entropy of every chunk token given BOS and the tokens before it in its
chunk. Perplexity is exp of that mean.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import corpus  # beside this file
import tokenizers
import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from prunereg.harness.quality import mean_cross_entropy

HERE = Path(__file__).resolve().parent
VOCAB_SIZE = 4096
BOS, EOS = "<s>", "</s>"
SEQ_LEN = 256


@dataclass
class Checkpoint:
    """The best validation cross-entropy so far, the step that reached it, and its weights."""

    val_ce: float = math.inf
    step: int = 0
    state: dict[str, torch.Tensor] = field(default_factory=dict)


def model_config(bos_token_id: int, eos_token_id: int) -> LlamaConfig:
    """The embedded model's architecture (other code depends on these numbers)."""
    return LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=128,
        intermediate_size=384,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=4,
        head_dim=16,
        max_position_embeddings=512,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        tie_word_embeddings=True,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
    )


def train_tokenizer(text: str) -> PreTrainedTokenizerFast:
    """Byte-level BPE with vocab 4096 (BOS and EOS first); encoding adds BOS like Llama's."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=[BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(text.split("\n"), trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, tok.token_to_id(BOS))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=EOS, model_max_length=512
    )


def encode(tokenizer, text: str) -> torch.Tensor:
    return torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)


@torch.no_grad()
def unigram_cross_entropy(train_ids: torch.Tensor, eval_ids: torch.Tensor, vocab_size: int = VOCAB_SIZE) -> float:
    """Mean cross-entropy (nats) of an add-one-smoothed unigram model fitted on train tokens."""
    counts = torch.bincount(train_ids, minlength=vocab_size).double()
    log_p = torch.log((counts + 1) / (counts.sum() + vocab_size))
    return -log_p[eval_ids].mean().item()


def learning_rate(step: int, steps: int, peak: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step <= warmup:
        return peak * step / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train(args) -> dict:
    splits = corpus.load_splits()
    corpus_sha256 = corpus.CORPUS_SHA256

    torch.manual_seed(args.seed)
    # warn_only: the few CUDA ops with no deterministic kernel warn instead of failing.
    torch.use_deterministic_algorithms(True, warn_only=True)
    device = torch.device(args.device)
    started = time.perf_counter()

    tokenizer = train_tokenizer(splits["train"])
    bos_id, eos_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    ids = {name: encode(tokenizer, text) for name, text in splits.items()}
    print({f"{name}_tokens": len(t) for name, t in ids.items()}, flush=True)

    model = LlamaForCausalLM._from_config(model_config(bos_id, eos_id), attn_implementation="eager").to(device)
    params = sum(p.numel() for p in model.parameters())
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.95),
    )
    generator = torch.Generator().manual_seed(args.seed)
    train_ids = ids["train"]
    offsets = torch.arange(SEQ_LEN - 1)
    best = Checkpoint()
    history = []
    model.train()
    for step in range(1, args.steps + 1):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, args.steps, args.lr, args.warmup)
        starts = torch.randint(0, len(train_ids) - SEQ_LEN, (args.batch_size,), generator=generator)
        body = train_ids[starts[:, None] + offsets]
        batch = torch.cat([torch.full((args.batch_size, 1), bos_id), body], dim=1).to(device)
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step % args.eval_every == 0 or step == args.steps:
            val_ce, _ = mean_cross_entropy(model, ids["val"], bos_id)
            history.append({"step": step, "train_loss": round(loss.item(), 4), "val_ce": round(val_ce, 4)})
            print(history[-1], flush=True)
            if val_ce < best.val_ce:
                best = Checkpoint(
                    val_ce, step, {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
                )
    train_seconds = time.perf_counter() - started

    # Save the best checkpoint in bf16, then score exactly what was saved: reload it
    # with plain transformers, in float32 on the CPU, as the harness will.
    out = Path(args.out)
    model_dir = out / "model"
    model.load_state_dict(best.state)
    model.to(device="cpu", dtype=torch.bfloat16).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    reloaded = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    reloaded_tok = AutoTokenizer.from_pretrained(model_dir)
    eval_ids = encode(reloaded_tok, splits["eval"])
    assert torch.equal(eval_ids, ids["eval"]), "the saved tokenizer encodes differently"
    eval_started = time.perf_counter()
    dense_ce, eval_tokens = mean_cross_entropy(reloaded, eval_ids, bos_id)
    eval_seconds = time.perf_counter() - eval_started
    val_ce_saved, _ = mean_cross_entropy(reloaded, ids["val"], bos_id)
    unigram_ce = unigram_cross_entropy(ids["train"], eval_ids)

    card = {
        "model": "prunereg embedded default (LlamaForCausalLM)",
        "parameters": params,
        "weights_dtype": "bfloat16",
        "dense_eval_ppl": round(math.exp(dense_ce), 4),
        "dense_eval_mean_ce": round(dense_ce, 6),
        "unigram_eval_ppl": round(math.exp(unigram_ce), 4),
        "unigram_eval_mean_ce": round(unigram_ce, 6),
        "val_mean_ce": round(val_ce_saved, 6),
        "eval_tokens": eval_tokens,
        "val_tokens": len(ids["val"]),
        "train_tokens": len(ids["train"]),
        "eval_protocol": {
            "seq_len": SEQ_LEN,
            "chunk_tokens": SEQ_LEN - 1,
            "prefix": BOS,
            "add_special_tokens": False,
            "dtype": "float32",
            "description": "encode eval.txt without special tokens; consecutive chunks of seq_len-1 tokens, "
            "each prefixed with BOS; mean cross-entropy over all chunk tokens",
        },
        "eval_cpu_seconds": round(eval_seconds, 2),
        "corpus": f"Debian {corpus.DEB_PACKAGE} {corpus.DEB_VERSION}",
        "corpus_sha256": corpus_sha256,
        "eval_sha256": corpus.sha256(splits["eval"]),
        "seed": args.seed,
        "train_steps": args.steps,
        "best_step": best.step,
        "batch_size": args.batch_size,
        "seq_len": SEQ_LEN,
        "peak_lr": args.lr,
        "warmup_steps": args.warmup,
        "weight_decay": args.weight_decay,
        "train_wall_seconds": round(train_seconds, 1),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.machine()})",
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "tokenizers_version": tokenizers.__version__,
        "history": history,
    }
    (out / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    return card


def main() -> None:
    parser = argparse.ArgumentParser(description="Train the prunereg embedded default model.")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--out", type=Path, default=HERE.parents[1] / "harness" / "embedded", help="writes OUT/model/ and OUT/card.json"
    )
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--weight-decay", type=float, default=0.1)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.device.startswith("cuda"):
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS
    card = train(args)
    print(json.dumps({k: v for k, v in card.items() if k != "history"}, indent=2))


if __name__ == "__main__":
    main()
