"""Quality tasks measured: each named task of spec/tasks.py scored on the dense model once and on each pruned copy.

A measure is built before any point is pruned (its data is read and the dense model scored
there), so a task whose data or harness is missing stops the evaluation with one line before any
work is done. Nothing here downloads: a perplexity task reads a local text file or the local
Hugging Face datasets cache, and lm-eval runs with the hub and datasets offline.
"""

from __future__ import annotations

import io
import logging
import math
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerBase

import prunereg
from prunereg.harness.embedded import EVAL_SPLIT
from prunereg.harness.quality import encode, mean_cross_entropy
from prunereg.spec.results import QualityResult
from prunereg.spec.tasks import PAPER_CONTEXT_CAP, TASK_DATA_ENV, QualityTask, task

HERE = Path(__file__).resolve().parent
"""The lm-eval task configs shipped with prunereg (TaskManager's include_path) and their data."""
MAX_TEXT_BYTES = 256 * 2**20
"""A local test text larger than this is refused (WikiText-2's test split is 1.3 MB, C4's 1100 documents 2.4 MB)."""
C4_DOCUMENTS, C4_WINDOWS = 1100, 256
"""SparseGPT's and Wanda's C4 evaluation: the first 1100 validation documents, truncated to 256 windows."""
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


class TaskUnavailable(Exception):
    """A task that cannot run here (no local data, no lm-eval), as one line."""


class QualityMeasure(Protocol):
    def of(self, pruned: PreTrainedModel) -> QualityResult: ...


class HeldOutQuality:
    """heldout-ppl: cross-entropy on the embedded held-out split (harness/quality.py); the dense value is computed once."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase):
        self.task = task("heldout-ppl")
        self.ids, self.bos = encode(tokenizer, EVAL_SPLIT), tokenizer.bos_token_id
        self.dense, _ = mean_cross_entropy(model, self.ids, self.bos)

    def of(self, pruned: PreTrainedModel) -> QualityResult:
        loss, tokens = mean_cross_entropy(pruned, self.ids, self.bos)
        return QualityResult(
            task=self.task.name, metric=self.task.metric, value=loss, dense_value=self.dense,
            higher_is_better=self.task.higher_is_better, tokens=tokens, task_version=self.task.version,
            harness="prunereg", harness_version=prunereg.__version__,
        )  # fmt: skip


def paper_window(model: PreTrainedModel) -> int:
    """The perplexity window: the model's context length, capped (spec/tasks.py PAPER_CONTEXT_CAP)."""
    return min(int(model.config.max_position_embeddings), PAPER_CONTEXT_CAP)


@torch.inference_mode()
def windowed_perplexity(
    model: PreTrainedModel, ids: torch.Tensor, seq_len: int, batch_size: int | None = None
) -> tuple[float, int]:
    """(perplexity, next-token predictions scored) under the papers' protocol: non-overlapping windows of
    `seq_len` tokens, the short tail dropped; exp of the mean over windows of each window's mean cross-entropy."""
    windows = ids.numel() // seq_len
    if windows == 0:
        raise TaskUnavailable(f"the text has {ids.numel()} tokens, fewer than one window of {seq_len}")
    batch_size = batch_size or max(1, 16_384 // seq_len)
    device = next(model.parameters()).device
    body = ids[: windows * seq_len].view(windows, seq_len)
    total = 0.0
    for batch in body.split(batch_size):
        batch = batch.to(device)
        logits = model(input_ids=batch, use_cache=False).logits[:, :-1].float()
        losses = F.cross_entropy(logits.transpose(1, 2), batch[:, 1:], reduction="none")
        total += losses.double().mean(dim=1).sum().item()
    return math.exp(total / windows), windows * (seq_len - 1)


def local_text(spec: QualityTask) -> str:
    """The joined test text of a paper perplexity task: $PRUNEREG_TASK_DATA/<name>.txt, else the local datasets cache."""
    folder = os.environ.get(TASK_DATA_ENV)
    path = Path(folder) / f"{spec.name}.txt" if folder else None
    if path is not None and path.is_file():
        if path.stat().st_size > MAX_TEXT_BYTES:
            raise TaskUnavailable(f"{spec.name}: {path} is larger than {MAX_TEXT_BYTES >> 20} MiB")
        return path.read_text(encoding="utf-8")
    text = _cached_dataset_text(spec)
    if text is None:
        assert spec.hf_dataset is not None
        where = f"{path} does not exist" if path is not None else f"${TASK_DATA_ENV} is not set"
        raise TaskUnavailable(
            f"{spec.name}: no local data ({where}, and {spec.hf_dataset[0]} is not in the local Hugging Face "
            f"datasets cache); put the joined test text in ${TASK_DATA_ENV}/{spec.name}.txt: prunereg never downloads it"
        )
    return text


@contextmanager
def offline() -> Iterator[None]:
    """The hub and datasets offline (environment and, where already imported, their module constants)."""
    saved = {k: os.environ.get(k) for k in OFFLINE}
    os.environ.update(OFFLINE)
    patched: list[tuple[Any, str, Any]] = []
    for module, name in (("datasets.config", "HF_HUB_OFFLINE"), ("datasets.config", "HF_DATASETS_OFFLINE"),
                         ("huggingface_hub.constants", "HF_HUB_OFFLINE")):  # fmt: skip
        loaded = sys.modules.get(module)
        if loaded is not None and hasattr(loaded, name):
            patched.append((loaded, name, getattr(loaded, name)))
            setattr(loaded, name, True)
    try:
        yield
    finally:
        for loaded, name, value in patched:
            setattr(loaded, name, value)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _cached_dataset_text(spec: QualityTask) -> str | None:
    """The joined text from the Hugging Face datasets cache, offline; None when it is not there."""
    if spec.hf_dataset is None:
        return None
    path, name_or_file, split = spec.hf_dataset
    with offline():
        try:
            import datasets  # type: ignore[import-untyped]

            if spec.name == "c4-ppl":
                rows = datasets.load_dataset(path, data_files={split: name_or_file}, split=split)
                return " ".join(rows[:C4_DOCUMENTS]["text"])
            return "\n\n".join(datasets.load_dataset(path, name_or_file, split=split)["text"])
        except Exception:  # offline, anything `datasets` raises means the same: the data is not cached here
            return None


class PaperPerplexity:
    """wikitext2-ppl and c4-ppl: the perplexity pruning papers report, on a local copy of the test text."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, spec: QualityTask):
        self.task, self.seq_len = spec, paper_window(model)
        ids = torch.tensor(tokenizer(local_text(spec), verbose=False)["input_ids"])
        self.ids = ids[: C4_WINDOWS * self.seq_len] if spec.name == "c4-ppl" else ids
        self.dense, _ = windowed_perplexity(model, self.ids, self.seq_len)

    def of(self, pruned: PreTrainedModel) -> QualityResult:
        value, tokens = windowed_perplexity(pruned, self.ids, self.seq_len)
        return QualityResult(
            task=self.task.name, metric=self.task.metric, value=value, dense_value=self.dense,
            higher_is_better=False, tokens=tokens, task_version=self.task.version, harness="prunereg",
            harness_version=prunereg.__version__,
        )  # fmt: skip


def import_lm_eval(spec: QualityTask) -> Any:
    """lm_eval, imported offline; a missing install is one line (the GPU machine has none)."""
    with offline():
        try:
            import lm_eval  # type: ignore[import-untyped]
            import lm_eval.models.huggingface  # type: ignore[import-untyped]
            import lm_eval.tasks  # type: ignore[import-untyped]
        except ImportError as err:
            raise TaskUnavailable(
                f"{spec.name} runs through lm-evaluation-harness, which is not installed here ({err.name}): "
                "pip install 'lm-eval[hf]'"
            ) from None
    return lm_eval


class LmEvalQuality:
    """An lm-eval task shipped in this folder, run through lm-eval's Python API on the model in memory."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, spec: QualityTask, batch_size=64):
        self.task, self.tokenizer, self.batch_size = spec, tokenizer, batch_size
        self.lm_eval = import_lm_eval(spec)
        self.dense, self.examples = self.score(model)

    def score(self, model: PreTrainedModel) -> tuple[float, int]:
        """(accuracy, examples) of `model`, zero- or few-shot as the task says."""
        assert self.task.lm_eval_task is not None
        name = self.task.lm_eval_task
        quiet = logging.getLogger("lm_eval")
        level = quiet.level
        quiet.setLevel(logging.ERROR)
        try:  # lm-eval's progress bars ignore TQDM_DISABLE and would break `prunereg evaluate`'s own: not shown
            with offline(), redirect_stderr(io.StringIO()):
                lm = self.lm_eval.models.huggingface.HFLM(
                    pretrained=model, tokenizer=self.tokenizer, batch_size=self.batch_size,
                    max_length=int(model.config.max_position_embeddings),
                )  # fmt: skip
                manager = self.lm_eval.tasks.TaskManager(include_path=str(HERE), include_defaults=False)
                out = self.lm_eval.simple_evaluate(
                    model=lm, tasks=[name], task_manager=manager, num_fewshot=self.task.shots,
                    log_samples=False, bootstrap_iters=0,
                )  # fmt: skip
        finally:
            quiet.setLevel(level)
        if str(out["versions"][name]) != self.task.version:
            raise TaskUnavailable(
                f"{self.task.name}: lm-eval ran version {out['versions'][name]} of {name}, spec/tasks.py says {self.task.version}"
            )
        return float(out["results"][name][f"{self.task.metric},none"]), int(out["n-samples"][name]["effective"])

    def of(self, pruned: PreTrainedModel) -> QualityResult:
        value, examples = self.score(pruned)
        return QualityResult(
            task=self.task.name, metric=self.task.metric, value=value, dense_value=self.dense,
            higher_is_better=self.task.higher_is_better, tokens=0, task_version=self.task.version,
            shots=self.task.shots, examples=examples, harness="lm-eval", harness_version=self.lm_eval.__version__,
        )  # fmt: skip


def measure(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, name: str) -> QualityMeasure:
    """The measure of task `name`, with the dense model scored; TaskUnavailable when it cannot run here."""
    spec = task(name)
    if spec.kind == "lm-eval":
        return LmEvalQuality(model, tokenizer, spec)
    if spec.name == "heldout-ppl":
        return HeldOutQuality(model, tokenizer)
    return PaperPerplexity(model, tokenizer, spec)
