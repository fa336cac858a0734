"""The cost model's tensor-parallel figures for 70B-class models (spec/costmodel.py): per-GPU time of dense,
25 % depth and 25 % width on 1, 2, 4 and 8 GPUs of one host, and the theoretical speedup at each degree.

25 % depth drops 20 of 80 layers; 25 % width removes 2 of 8 KV groups (with their query heads) and a quarter
of the MLP channels in every layer, declared as a width submission declares it. The 6 KV groups left split
3, 3 over 2 GPUs but 2, 2, 1, 1 over 4 and 1 × 6, 0, 0 over 8: the largest shard decides, so width's
attention gains nothing at 4 and 8 GPUs. The "comm" column is the share of the step spent in all-reduces
(bandwidth only; their per-step latency is left out).

python benchmarks/tp_roofline.py > benchmarks/tp_roofline.md
"""

from __future__ import annotations

from prunereg.spec.catalog import Phase, Scenario, devices, models
from prunereg.spec.costmodel import estimate
from prunereg.spec.effects import ResolvedEffect
from prunereg.spec.taxonomy import LAYER_GEMMS, Gemm

SCENARIOS = (
    Scenario(phase=Phase.prefill, batch_size=1, seq_len=4096),
    Scenario(phase=Phase.decode, batch_size=1, seq_len=4096),
)
DEGREES = (1, 2, 4, 8)


def effect(gemm: Gemm, dimension: str, granularity: str) -> ResolvedEffect:
    return ResolvedEffect(gemm=gemm, dimension=dimension, mode="static", granularity=granularity, fraction=0.25)


POINTS = {
    "25 % depth": [effect(g, "M", "layer") for g in LAYER_GEMMS],
    "25 % width": [
        effect(Gemm.qkv_proj, "N", "kv_group"),
        effect(Gemm.o_proj, "K", "kv_group"),
        effect(Gemm.gate_up_proj, "N", "channel"),
        effect(Gemm.down_proj, "K", "channel"),
    ],
}


def main() -> None:
    device = devices()["h200"]
    print(
        f"Roofline on {device.label} (bf16), per GPU, the slowest one; interconnect "
        f"{(device.interconnect_bandwidth or 0) / 1e9:.0f} GB/s one way per GPU. `comm`: the dense step's share in "
        "all-reduces, bandwidth only (their per-step latency, some microseconds each, 160 per step, is left out: "
        "decode at batch 1 pays it). Written by benchmarks/tp_roofline.py.\n"
    )
    print("| model | scenario | GPUs | dense ms | comm | 25 % depth ms | speedup | 25 % width ms | speedup |")
    print("|---|---|--:|--:|--:|--:|--:|--:|--:|")
    for name in ("llama-2-70b", "llama-3-70b"):
        arch = models()[name]
        for scenario in SCENARIOS:
            for tp in DEGREES:
                dense = estimate(arch, device, scenario, (), 2, tp)
                cells = [f"{dense.time_ms:.2f}", f"{dense.communication_s / dense.time_s:.1%}"]
                for effects in POINTS.values():
                    pruned = estimate(arch, device, scenario, effects, 2, tp)
                    cells += [f"{pruned.time_ms:.2f}", f"{dense.time_s / pruned.time_s:.2f}×"]
                print(f"| {arch.label} | {scenario.name} | {tp} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
