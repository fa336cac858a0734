#!/usr/bin/env bash
# Issue 12, part 2 on the lent H200: one GEMM at each Llama-3.1-8B projection shape, tokens 1 … 8192,
# bf16, dense against 2:4 (the adapter's semi-structured tensor, cuSPARSELt with the weight compressed
# once and alg_id searched once, torchao's semi-sparse weight where it imports), eager and CUDA Graph
# replay, in two rounds in separate processes: round 1 with torch.profiler traces (host against device
# time at 1, 128 and 8192 tokens) -> results/h200-gemm-2-4/, round 2 without -> results/h200-gemm-2-4/round-2/
# (the run-to-run check; h100-gemm-2-4/ if an H100 came). Round 1's table becomes benchmarks/<card>_gemm_2_4.md.
# One device call:
#   bash benchmarks/h200_gemm_2_4.sh
# then unpack <card>-gemm-2-4.tgz at the repository root and commit results/<card>-gemm-2-4/ and the table.
# Run from the repository root on the device machine, wheels of README "Measuring on a GPU" in .whl/.
set -uo pipefail
source benchmarks/device_env.sh
out=${OUT:-/tmp/out}; saved=/tmp/results/$card-gemm-2-4; mkdir -p "$saved/round-2" "$out" /tmp/results/benchmarks
pack() {  # after each round: a killed run still brings back the ones before it
  tar czf "$out/$card-gemm-2-4.tgz" -C /tmp/results "$card-gemm-2-4" benchmarks --transform "s,^$card-gemm-2-4,results/$card-gemm-2-4,"
}
{
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv,noheader
  python3 -c "import torch; print('torch', torch.__version__, 'cusparselt', torch.backends.cusparselt.version())"
  python3 benchmarks/gemm_2_4.py --dry-run
  timeout 280 python3 benchmarks/gemm_2_4.py --graph --out "$saved" 2>&1 | grep -v -i warn
  cp "$saved/gemm_2_4.md" "/tmp/results/benchmarks/${card}_gemm_2_4.md"
  pack
  nvidia-smi --query-gpu=clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv,noheader
  timeout 240 python3 benchmarks/gemm_2_4.py --graph --profile-tokens --out "$saved/round-2" 2>&1 | grep -v -i warn
  nvidia-smi --query-gpu=clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv,noheader
} 2>&1 | tee "$saved/log.txt"
pack
