"""Latency of one prefill (TTFT) or one decode step (TPOT), dense and pruned interleaved.

Dense and pruned repeats alternate so that slow drift of the machine (clocks, other load) hits
both alike; the speedup is a ratio of medians taken within one run. On CUDA each repeat is timed
with CUDA events; on CPU with the wall clock. Input token values are random: latency does not
depend on them. Full GPU fidelity (static cache, graph replay, L2 flush) is a later harness mode.
"""

from __future__ import annotations

import inspect
import statistics
import time
from collections.abc import Callable

import torch
from transformers import DynamicCache, PreTrainedModel

from prunereg.spec.catalog import Phase, Scenario


def cache_argument(model: PreTrainedModel) -> str:
    """The forward() keyword for the KV cache: `cache` from transformers 5.2x on, `past_key_values` before."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


class Workload:
    """One scenario on one model: `step` is the timed work, `reset` restores state off the clock."""

    def __init__(self, model: PreTrainedModel, scenario: Scenario, seed: int = 0):
        self.model, self.scenario = model, scenario
        device = next(model.parameters()).device
        generator = torch.Generator().manual_seed(seed)
        vocab, b, s = model.config.vocab_size, scenario.batch_size, scenario.seq_len
        self.prompt = torch.randint(vocab, (b, s), generator=generator).to(device)
        self.cache_arg = cache_argument(model)
        self.cache = None
        if scenario.phase is Phase.decode:
            self.token = torch.randint(vocab, (b, 1), generator=generator).to(device)
            self.position = torch.full((b, 1), s, device=device)
            self.cache = DynamicCache(config=model.config)
            self._forward(self.prompt, use_cache=True, **{self.cache_arg: self.cache})

    @torch.inference_mode()
    def _forward(self, ids: torch.Tensor, **kwargs):
        return self.model(ids, logits_to_keep=1, **kwargs)

    def step(self) -> None:
        if self.cache is None:
            self._forward(self.prompt, use_cache=True)
        else:
            self._forward(self.token, position_ids=self.position, use_cache=True, **{self.cache_arg: self.cache})

    def reset(self) -> None:
        if self.cache is not None:
            extra = self.cache.get_seq_length() - self.scenario.seq_len
            if extra > 0:
                self.cache.crop(-extra)  # a negative count removes tokens on every transformers 5.x


def timer(device: torch.device) -> Callable[[Workload], float]:
    """A function that runs one step and returns its time in ms."""
    if device.type == "cuda":
        def timed(work: Workload) -> float:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            work.step()
            end.record()
            end.synchronize()
            work.reset()
            return start.elapsed_time(end)
    else:
        def timed(work: Workload) -> float:
            begin = time.perf_counter()
            work.step()
            elapsed = (time.perf_counter() - begin) * 1e3
            work.reset()
            return elapsed
    return timed


def measure_pair(
    dense: PreTrainedModel, pruned: PreTrainedModel, scenario: Scenario, warmup: int, repeats: int
) -> tuple[list[float], list[float]]:
    """Raw per-repeat times (ms) of the dense and the pruned model, interleaved."""
    works = [Workload(dense, scenario), Workload(pruned, scenario)]
    timed = timer(next(dense.parameters()).device)
    for _ in range(warmup):
        for work in works:
            timed(work)
    samples: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for work, out in zip(works, samples):
            out.append(timed(work))
    return samples


def summary(samples: list[float]) -> dict[str, float]:
    """Median and the 20th/80th percentiles, the spread the leaderboard shows."""
    deciles = statistics.quantiles(samples, n=10, method="inclusive")
    return {"median": statistics.median(samples), "p20": deciles[1], "p80": deciles[7]}
