"""All-reduce bandwidth of gloo between tensor-parallel ranks on this host: where the cpu-generic device profile's
interconnect_bandwidth comes from (spec/data/devices.json).

Two ranks of one thread each (harness/tensor_parallel.py Ranks), float32 sums of 64 KiB to 64 MiB, 20 timed
all-reduces each after 3 untimed; the slower rank's mean time. Bus bandwidth = 2·(N−1)/N · bytes / time, the
figure the cost model divides a ring all-reduce's bytes by.

python benchmarks/gloo_allreduce.py > benchmarks/gloo_allreduce.txt
"""

from __future__ import annotations

import time

import torch
import torch.distributed as dist

from prunereg.harness.tensor_parallel import Rank, Ranks

SIZES = (1 << 16, 1 << 20, 1 << 24, 1 << 26)
REPEATS = 20


def mean_all_reduce_s(here: Rank, size: int, repeats: int) -> float:
    x = torch.ones(size // 4)
    for _ in range(3):
        dist.all_reduce(x)
    dist.barrier()
    start = time.perf_counter()
    for _ in range(repeats):
        dist.all_reduce(x)
    dist.barrier()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    ranks = 2
    with Ranks(ranks, threads=1) as group:
        print(
            f"gloo all-reduce, {ranks} ranks of 1 thread, {REPEATS} repeats; bus bandwidth = 2·(N−1)/N · bytes / time"
        )
        for size in SIZES:
            seconds = max(group.run(mean_all_reduce_s, None, size, REPEATS))
            bus = 2 * (ranks - 1) / ranks * size / seconds
            print(f"{size >> 10:>6} KiB: {seconds * 1e6:>8.0f} µs, bus bandwidth {bus / 1e9:.2f} GB/s")


if __name__ == "__main__":
    main()
