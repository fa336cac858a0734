#!/usr/bin/env bash
# Issue 4's benchmark on the lent H200. Two device calls, each one stage run twice in separate
# processes (round 1 -> results/h200-fidelity/, ingested by `make demo`; round 2 ->
# results/h200-fidelity/round-2/, the run-to-run check):
#   bash benchmarks/h200_fidelity.sh graph     CUDA-only harness tests; ceilings; drop-50 and width-50
#                                              on Llama-3.1-8B shapes, graph and eager mode, reference
#                                              suite; kernel profile of the dense model (round 1)
#   bash benchmarks/h200_fidelity.sh compiled  the same points in compiled mode, prefill bs=1/4096 and
#                                              decode bs=1/ctx 4096 only (about a minute of compiling
#                                              per model and shape); profile in compiled mode
# GPU clocks, temperature and power are logged between rounds. Then, anywhere:
#   python3 benchmarks/fidelity_report.py results/h200-fidelity --out benchmarks/h200_fidelity.md
# Run from the repository root on the device machine, wheels of README "Measuring on a GPU" in .whl/.
set -uo pipefail
what=${1:-graph}
source benchmarks/device_env.sh
out=${OUT:-/tmp/out}; saved=/tmp/results/h200-fidelity; mkdir -p "$saved/round-2" "$out"
case $what in
  graph) args=(--modes graph eager) ;;
  compiled) args=(--modes compiled --scenarios prefill-b1-s4096 decode-b1-c4096) ;;
  *) echo "usage: $0 graph|compiled" >&2; exit 2 ;;
esac
round() {  # a killed round still brings back the ones before it
  nvidia-smi --query-gpu=clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv,noheader
  timeout 420 python3 benchmarks/fidelity.py "$@" "${args[@]}" 2>&1 | grep -v -i warn
  tar czf "$out/h200-fidelity-$what.tgz" -C /tmp results
}
{
  nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
  [ "$what" = graph ] && python3 -m pytest -q --tb=short -p no:cacheprovider tests/test_latency.py 2>&1 | tail -5
  round "$saved" --profile
  round "$saved/round-2"
  nvidia-smi --query-gpu=clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv,noheader
} 2>&1 | tee "$saved/log-$what.txt"
tar czf "$out/h200-fidelity-$what.tgz" -C /tmp results
