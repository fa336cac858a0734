#!/usr/bin/env bash
# The shipped submissions with their papers' criteria (calibrated selections) on the lent H200: the CUDA
# bf16 path of every faithful selection, on the embedded model (trained weights, so quality is real),
# eager harness, suite `ci`, held-out cross-entropy (the GPU machine has no lm-eval). Calibration time is
# in each saved evaluation's calibration record. Saved evaluations go to results/h200-faithful/ (commit
# them); the Markdown table to benchmarks/h200_faithful.md.
# Usage: bash benchmarks/h200_faithful.sh [SUBMISSION...]. Run from the repository root on the device
# machine with the wheels of pydantic, SQLAlchemy and jsonschema in .whl/ (README, "Measuring on a GPU").
set -uo pipefail
source benchmarks/device_env.sh
out=${OUT:-/tmp/out}; saved=/tmp/results/h200-faithful; mkdir -p "$saved" "$out"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,temperature.gpu --format=csv
submissions=("$@")  # default: every shipped submission with a built-in adapter
[ ${#submissions[@]} -gt 0 ] || submissions=(dense shortgpt attention-drop llm-pruner slicegpt svd-llm wanda sparsegpt-2-4 mixture-of-depths minference)
for s in "${submissions[@]}"; do
  start=$SECONDS
  timeout 240 python3 -m prunereg.cli evaluate "submissions/$s.json" --device cuda --scenarios ci --mode eager \
    --task heldout-ppl --repeats 10 --warmup 2 --save "$saved" --db /tmp/faithful.db > "/tmp/results/$s.log" 2>&1 \
    && echo "$s: ok in $((SECONDS - start)) s" || { echo "$s: FAILED"; tail -3 "/tmp/results/$s.log"; }
  tar czf "$out/h200-faithful.tgz" -C /tmp results  # after each one: a killed run still brings back the rest
done
python3 benchmarks/markdown_table.py /tmp/faithful.db | tee /tmp/results/h200_faithful.md
tar czf "$out/h200-faithful.tgz" -C /tmp results
