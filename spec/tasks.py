"""The quality tasks prunereg can measure: named, versioned, each with its metric, direction and protocol.

A results file names a task by `name` (QualityResult.task) and the version it ran
(QualityResult.task_version); a figure is only compared with figures of the same name and version.
A protocol change is a new version, never an edit of an old one. This module imports no torch:
the measuring code is prunereg.harness.tasks.
"""

from __future__ import annotations

from functools import cache
from typing import Literal

from pydantic import Field

from .catalog import Frozen

TaskKind = Literal["perplexity", "lm-eval"]
TASK_DATA_ENV = "PRUNEREG_TASK_DATA"
"""A folder holding `<task name>.txt`: the test text of a perplexity task whose data is not shipped."""
PAPER_CONTEXT_CAP = 4096
"""Longest window of the papers' perplexity protocol (LLaMA-2's context): a 128k-context model is not scored
in one window."""


class QualityTask(Frozen):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,63}$", description="the name results record as `task`")
    version: str = Field(pattern=r"^[0-9]+(\.[0-9]+)?$", description="the protocol's version, recorded with results")
    metric: str = Field(description="what `value` is")
    higher_is_better: bool = Field(description="direction of the metric")
    kind: TaskKind = Field(description="perplexity: prunereg's own code; lm-eval: run by lm-evaluation-harness")
    data: str = Field(description="where the text comes from")
    protocol: str = Field(description="how the figure is computed, in words")
    shots: int | None = Field(None, description="few-shot examples per question (lm-eval tasks)")
    lm_eval_task: str | None = Field(None, description="the lm-eval task name (lm-eval tasks)")
    hf_dataset: tuple[str, ...] | None = Field(
        None,
        description="the Hugging Face dataset read from the local cache, as load_dataset's path, name/files, split",
    )


@cache
def tasks() -> dict[str, QualityTask]:
    papers = (
        "cut into non-overlapping windows of the model's context length (max_position_embeddings, capped at "
        f"{PAPER_CONTEXT_CAP}), the tail shorter than a window dropped; each window is one sequence with no BOS "
        "added; perplexity = exp of the mean over windows of each window's mean next-token cross-entropy "
        "(context-length - 1 predictions per window), as SparseGPT's and Wanda's eval code (arXiv 2301.00774, "
        "2306.11695) compute it; float32 logits"
    )
    local = f"${TASK_DATA_ENV}/{{name}}.txt (the joined text), else the local datasets cache (never downloaded): "
    rows = [
        QualityTask(
            name="heldout-ppl", version="1", metric="cross_entropy", higher_is_better=False, kind="perplexity",
            data="the embedded model's held-out split: harness/embedded/eval.txt, shipped",
            protocol="the text encoded without special tokens, cut into consecutive chunks of 255 tokens, BOS put "
            "before each; mean next-token cross-entropy (nats/token) over every chunk token, float32 logits "
            "(harness/quality.py; the embedded model's card uses the same function)",
        ),
        QualityTask(
            name="wikitext2-ppl", version="1", metric="perplexity", higher_is_better=False, kind="perplexity",
            data=local.format(name="wikitext2-ppl") + "wikitext, wikitext-2-raw-v1, split test",
            protocol="the test split's records joined with '\\n\\n', tokenized once with the tokenizer's special "
            "tokens (BOS at the very start only), " + papers,
            hf_dataset=("wikitext", "wikitext-2-raw-v1", "test"),
        ),
        QualityTask(
            name="c4-ppl", version="1", metric="perplexity", higher_is_better=False, kind="perplexity",
            data=local.format(name="c4-ppl") + "allenai/c4, en/c4-validation.00000-of-00008.json.gz, split validation",
            protocol="the first 1100 validation documents joined with ' ', tokenized once with the tokenizer's "
            "special tokens, truncated to 256 windows, " + papers,
            hf_dataset=("allenai/c4", "en/c4-validation.00000-of-00008.json.gz", "validation"),
        ),
        QualityTask(
            name="austen-cloze", version="1.0", metric="acc", higher_is_better=True, kind="lm-eval",
            data="300 sentences of the embedded held-out split: harness/tasks/austen_cloze.jsonl (tools/austen_cloze.py), "
            "shipped",
            protocol="multiple choice: a sentence without its last word, and 4 endings (the true one and 3 last "
            "words of other held-out sentences, drawn by hash); the choice with the highest log-likelihood "
            "given the context is the answer; accuracy over all examples (lm-eval's acc; acc_norm, normalised "
            "by the ending's length in bytes, is in lm-eval's output), zero-shot, lm-eval's HFLM on the model "
            "in memory, offline",
            shots=0, lm_eval_task="austen_cloze",
        ),
    ]  # fmt: skip
    return {row.name: row for row in rows}


def task(name: str) -> QualityTask:
    """The task named `name`; ValueError names the known ones."""
    known = tasks()
    if name not in known:
        raise ValueError(f"unknown quality task '{name}' (known: {', '.join(known)})")
    return known[name]


def tasks_table() -> str:
    """The quality tasks as a Markdown table (`prunereg list tasks --markdown`), protocol included."""
    lines = ["| task | version | metric | better | kind | data | protocol |", "|---|---|---|---|---|---|---|"]
    for row in tasks().values():
        cells = [f"`{row.name}`", row.version, row.metric, "higher" if row.higher_is_better else "lower", row.kind]
        cells += [row.data, row.protocol]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"
