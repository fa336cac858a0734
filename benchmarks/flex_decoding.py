"""Why flex_attention made fused mode's decode step slower than SDPA, and what prunereg's own split-KV kernel does.

benchmarks/fidelity.py's profile found the dense Llama-3.1-8B fused decode step (bs=1, ctx 4096) at 11.3 ms with
flex_attention against 6.6 ms with SDPA, its attention kernel 4.8 ms a step (150 µs a layer, against 6 µs to read a
layer's cache), named `triton_tem_fused__to_copy__unsafe_view_add_cat_flex_attention_mul_neg_…`: inductor had fused
the rotary embedding and the cache write into the flex template's loads (a prologue). On one GPU, random bf16
weights, this times

  - the one-query attention alone over a 4097-position cache, 32 calls captured in one CUDA Graph (µs per call):
    SDPA, and flex_attention compiled on its own, also over 4096 keys, with K/V heads repeated instead of grouped
    and with its main kernel forced, each with inductor's debug lines saying whether it chose its split-KV
    decoding kernel or its main one; and harness/decode_attention.py's Triton split-KV kernel with its default
    tuning and with other key blocks, splits per SM and warps (ALONE);
  - the whole fused decode step, captured and replayed (median of 20 replays), and its attention kernels'
    time (torch.profiler), with the step's one-query attention computed by
      sdpa               F.scaled_dot_product_attention (fused mode's default),
      split-kv           harness/decode_attention.py's kernel (DECODE_ATTENTION "split-kv"),
      flex               flex_attention compiled inside each layer's graph (what DECODE_ATTENTION "flex" ran),
      flex, no prologue  the same with inductor's prologue fusion off,
      flex, own graph    flex_attention compiled on its own, called outside the layer's graph.

On an H100 with torch 2.11 (results/h100-flex/, 2026-12-06) the fusion was not the cause: flex_attention alone took
109.3 µs a call against SDPA's 10.7 µs, and the step 11.2, 11.2 and 10.9 ms in the three flex variants against
6.5 ms. Run again with the split-KV kernel (same card and day): 9.2 µs a call against SDPA's 10.5 µs, its attention
0.39 ms a step against 0.47 ms, the replayed step 6.61 ms against 6.62 ms. Writes OUT/flex-decoding.json and prints a
table; run by benchmarks/h200_flex.sh.
"""

from __future__ import annotations

import argparse
import json
import logging
from contextlib import nullcontext
from pathlib import Path
from typing import Any
from unittest.mock import patch

import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import flex_attention

from prunereg.benchmarks.fidelity import DECODE, MODEL, decode_step, median_ms
from prunereg.harness import decode_attention, fused
from prunereg.harness.latency import release
from prunereg.harness.models import load_model

CALLS = 32
"""One call per layer of Llama-3.1-8B, captured together as a decode step captures them."""


def own_graph_flex():
    """flex_attention compiled on its own; the layer's graph breaks around the call."""
    compiled = torch.compile(flex_attention, dynamic=False)

    @torch.compiler.disable
    def attention(q, k, v, scale: float, gqa: bool) -> torch.Tensor:
        return compiled(q, k, v, scale=scale, enable_gqa=gqa)

    return attention


class Decisions(logging.Handler):
    """inductor's debug lines saying whether it chose its flex decoding kernel ("Use flex decoding True, ...")."""

    LOGGER = "torch._inductor.kernel.flex.flex_decoding"

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


ALONE = {
    "sdpa": ("sdpa", 1, True, None),
    "flex": ("flex", 1, True, None),
    "flex, 4096 keys": ("flex", 0, True, None),
    "flex, heads repeated": ("flex", 1, False, None),
    "flex, main kernel forced": ("flex", 1, True, {"FORCE_USE_FLEX_ATTENTION": True}),
    "split-kv": ("split-kv", 1, True, {}),
    "split-kv, 32-key blocks": ("split-kv", 1, True, {"BLOCK_N": 32}),
    "split-kv, 128-key blocks": ("split-kv", 1, True, {"BLOCK_N": 128}),
    "split-kv, 1 program per SM": ("split-kv", 1, True, {"PROGRAMS_PER_SM": 1}),
    "split-kv, 4 programs per SM": ("split-kv", 1, True, {"PROGRAMS_PER_SM": 4}),
    "split-kv, 2 warps": ("split-kv", 1, True, {"NUM_WARPS": 2}),
    "split-kv, 8 warps": ("split-kv", 1, True, {"NUM_WARPS": 8}),
}
"""Name -> (kernel, keys past the 4096 context, grouped K/V read in place, options): what the 4097-key call is set
against. A cache length of 4096 is a multiple of flex's 128-key blocks; repeated heads leave out its grouped-query
packing; forcing the main kernel shows what the split-KV decoding kernel is worth, if it ran. For flex the options
are its kernel_options; for split-kv, harness/decode_attention.py's tuning constants set for the call."""
TUNING = ("BLOCK_N", "PROGRAMS_PER_SM", "NUM_WARPS")


def attention_alone(kernel: str, extra: int, gqa: bool, options: Any) -> float:
    """µs per one-query attention call over a cache of DECODE.seq_len + extra keys, `CALLS` calls captured in one
    CUDA Graph."""
    heads, kv_heads, head_dim, length = 32, 8, 128, DECODE.seq_len + extra
    q = torch.randn(1, heads, 1, head_dim, device="cuda", dtype=torch.bfloat16)
    k, v = (torch.randn(1, kv_heads, length, head_dim, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    if not gqa:
        k, v = (t.repeat_interleave(heads // kv_heads, dim=1) for t in (k, v))
    scale = head_dim**-0.5
    if kernel == "sdpa":
        call = lambda: F.scaled_dot_product_attention(q, k, v, scale=scale, enable_gqa=gqa)  # noqa: E731
    elif kernel == "split-kv":
        tuning = {name: getattr(decode_attention, name) for name in TUNING} | options
        with patch.multiple(decode_attention, **tuning):
            expected = F.scaled_dot_product_attention(q, k, v, scale=scale, enable_gqa=gqa)
            error = (decode_attention.split_kv_decode(q, k, v, scale) - expected).abs().max().item()
            assert error < 2e-2, f"split-kv differs from SDPA by {error}"
            return timed(lambda: decode_attention.split_kv_decode(q, k, v, scale))
    else:
        compiled = torch.compile(flex_attention, dynamic=False)
        call = lambda: compiled(q, k, v, scale=scale, enable_gqa=gqa, kernel_options=options)  # noqa: E731
    return timed(call)


def timed(call) -> float:
    """µs per call, `CALLS` calls captured in one CUDA Graph after three warm-up calls."""
    for _ in range(3):
        call()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(CALLS):
            call()
    return median_ms(graph.replay) * 1e3 / CALLS


def step(model, variant: str) -> dict[str, float]:
    """The fused decode step with `variant`'s one-query attention: attention kernels (ms) and replay (ms)."""
    original = fused.one_query_attention
    if variant == "flex, own graph":
        fused.one_query_attention = own_graph_flex()
    else:
        fused.DECODE_ATTENTION = variant if variant in ("sdpa", "split-kv") else "flex"
    settings = torch._inductor.config.patch(prologue_fusion=False) if variant == "flex, no prologue" else nullcontext()
    try:
        with settings:
            kinds = decode_step(model, variant, top=3)
        return {
            "attention kernels, ms": kinds.get(f"{variant}, attention", 0.0),
            "step, graph replay, ms": kinds[f"step, graph replay, {variant}"],
            **{
                kind.removeprefix(f"{variant}, "): ms
                for kind, ms in kinds.items()
                if kind.startswith(f"{variant}, top")
            },
        }
    finally:
        fused.one_query_attention, fused.DECODE_ATTENTION = original, "sdpa"
        release([])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    found: dict[str, dict[str, Any]] = {}
    path = args.out / "flex-decoding.json"
    decisions = Decisions()
    logger = logging.getLogger(Decisions.LOGGER)
    logger.setLevel(logging.DEBUG)
    logger.addHandler(decisions)
    for name, setting in ALONE.items():
        decisions.lines.clear()
        try:
            row: dict[str, Any] = {"µs per call": attention_alone(*setting)}
        except Exception as err:  # one variant failing still leaves the others' rows
            row = {"failed": str(err)[:300]}
        if setting[0] == "flex":
            row["inductor's kernel choice"] = "; ".join(dict.fromkeys(decisions.lines)) or "no decision logged"
        found[f"attention alone, {name}"] = row
        print(f"attention alone, {name}:", json.dumps(row), flush=True)
    logger.removeHandler(decisions)
    path.write_text(json.dumps(found, indent=1) + "\n")
    model = load_model(MODEL, "cuda", torch.bfloat16).model
    for variant in ("sdpa", "split-kv", "flex", "flex, no prologue", "flex, own graph"):
        try:
            found[f"decode step, {variant}"] = step(model, variant)
        except Exception as err:  # one variant failing still leaves the others' rows
            found[f"decode step, {variant}"] = {"failed": str(err)[:300]}
        print(f"decode step, {variant}:", json.dumps(found[f"decode step, {variant}"]), flush=True)
        path.write_text(json.dumps(found, indent=1) + "\n")
    path.write_text(json.dumps(found, indent=1) + "\n")
    print("\n| what | attention | step replay |\n|---|--:|--:|")
    for name, row in found.items():
        if "µs per call" in row:
            print(f"| {name} | {row['µs per call']:.1f} µs per call | |")
        elif "failed" in row:
            print(f"| {name} | failed | |")
        else:
            print(f"| {name} | {row['attention kernels, ms']:.2f} ms | {row['step, graph replay, ms']:.2f} ms |")


if __name__ == "__main__":
    main()
