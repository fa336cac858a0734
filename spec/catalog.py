"""Catalogs shipped as data: model architectures, device profiles and measurement scenarios.

A model entry holds a model's public config numbers, so that latency can be measured on
random weights with no download and the cost model can price any architecture.
"""

from __future__ import annotations

import json
from enum import Enum
from functools import cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

DATA = Path(__file__).parent / "data"


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ModelArchitecture(Frozen):
    """Public config numbers of a decoder-only transformer (Llama, Qwen2 or Mistral layout)."""

    name: str
    label: str
    model_type: Literal["llama", "qwen2", "mistral"]
    vocab_size: int = Field(gt=0)
    hidden_size: int = Field(gt=0)
    intermediate_size: int = Field(gt=0)
    num_hidden_layers: int = Field(gt=0)
    num_attention_heads: int = Field(gt=0)
    num_key_value_heads: int = Field(gt=0)
    head_dim: int = Field(gt=0)
    max_position_embeddings: int = Field(gt=0)
    rope_theta: float
    rms_norm_eps: float
    tie_word_embeddings: bool
    attention_bias: bool = False
    embedded: bool = Field(False, description="weights ship with prunereg (the embedded default model)")
    source: str = Field(description="where the numbers come from")

    @property
    def queries_per_kv_group(self) -> int:
        return self.num_attention_heads // self.num_key_value_heads

    def shapes(self) -> tuple:
        """What decides every GEMM's shape and so the latency on random weights: two models with equal shapes
        (LLaMA-7B and Llama-2-7B, Llama-3-8B and Llama-3.1-8B) time alike, whatever their context or RoPE."""
        return (
            self.model_type, self.vocab_size, self.hidden_size, self.intermediate_size, self.num_hidden_layers,
            self.num_attention_heads, self.num_key_value_heads, self.head_dim, self.tie_word_embeddings,
            self.attention_bias,
        )  # fmt: skip


class DeviceProfile(Frozen):
    """The two ceilings of the roofline: dense matrix rate and memory bandwidth."""

    name: str
    label: str
    matmul_flops: float = Field(gt=0, description="dense bf16 matrix FLOP/s")
    memory_bandwidth: float = Field(gt=0, description="bytes/s")
    sparse_2_4: bool = Field(
        description="has 2:4 sparse tensor cores (Ampere and later); else 2:4 runs as masked dense"
    )
    interconnect_bandwidth: float | None = Field(
        None, gt=0, description="bytes/s one device sends to its peers (and receives) at once, the bus bandwidth of a "
        "ring all-reduce: half the bidirectional figure vendors quote (NVLink 4 on H100/H200 SXM: 900 GB/s "
        "bidirectional per GPU, 450e9 one way); none where tensor parallelism is not priced",
    )  # fmt: skip
    source: str


class Phase(str, Enum):
    prefill = "prefill"
    decode = "decode"


class Scenario(Frozen):
    """One measurement setting. seq_len is the prompt length (prefill) or the KV-cache context (decode)."""

    phase: Phase = Field(description="prefill (time to first token) or decode (time per output token)")
    batch_size: int = Field(ge=1, le=1024, description="sequences per step")
    seq_len: int = Field(ge=1, le=1_048_576, description="prompt tokens (prefill) or KV-cache context (decode)")

    @property
    def name(self) -> str:
        letter = "s" if self.phase is Phase.prefill else "c"
        return f"{self.phase.value}-b{self.batch_size}-{letter}{self.seq_len}"


def _load(name: str) -> dict:
    return json.loads((DATA / name).read_text())


@cache
def models() -> dict[str, ModelArchitecture]:
    return {k: ModelArchitecture(name=k, **v) for k, v in _load("models.json").items()}


@cache
def devices() -> dict[str, DeviceProfile]:
    return {k: DeviceProfile(name=k, **v) for k, v in _load("devices.json").items()}


@cache
def suites() -> dict[str, tuple[Scenario, ...]]:
    return {k: tuple(Scenario(**s) for s in v) for k, v in _load("scenarios.json").items()}


DEFAULT_TASKS = ("heldout-ppl",)
SUITE_TASKS: dict[str, tuple[str, ...]] = {
    "ci": ("heldout-ppl", "austen-cloze"),
    "reference": ("heldout-ppl", "wikitext2-ppl"),
}
"""The quality tasks (spec/tasks.py) each suite measures where the weights are real, the primary one first
(the leaderboard shows a run's first figure). 'ci' adds the shipped lm-eval cloze, which runs in seconds on
the embedded model on CPU; 'reference' (real checkpoints on a GPU, which has no lm-eval) adds the papers'
WikiText-2 perplexity, read from local data. Other suites measure DEFAULT_TASKS."""


def suite_tasks(scenarios: str | tuple[Scenario, ...]) -> tuple[str, ...]:
    """The quality tasks of a suite, named or given as its scenarios; DEFAULT_TASKS for any other scenarios."""
    name = scenarios if isinstance(scenarios, str) else next((k for k, v in suites().items() if v == scenarios), "")
    return SUITE_TASKS.get(name, DEFAULT_TASKS)


EMBEDDED_MODEL = "prunereg-mini"
