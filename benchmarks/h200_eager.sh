#!/usr/bin/env bash
# The shipped submissions on the lent H200, in the skeleton's eager harness (CUDA events, dynamic
# KV cache): on the embedded trained model (ci suite, with quality) and on Llama-3.1-8B shapes with
# random bf16 weights (reference suite, latency only). Results land as saved evaluations in
# results/h200-eager/ (commit them; `prunereg ingest` puts them in a registry) plus a log.
# Run from the repository root on the device machine, with the wheels of pydantic, SQLAlchemy and
# jsonschema in .whl/ (see README, "Measuring on a GPU").
set -euo pipefail
source benchmarks/device_env.sh
out=${OUT:-results}/h200-eager
nvidia-smi --query-gpu=name,driver_version,clocks.sm,temperature.gpu --format=csv
for s in dense shortgpt llm-pruner; do
  python3 -m prunereg.cli evaluate "submissions/$s.json" --device cuda --model prunereg-mini --scenarios ci --mode eager --save "$out" --db /tmp/h200.db
  python3 -m prunereg.cli evaluate "submissions/$s.json" --device cuda --model llama-3.1-8b --scenarios reference --mode eager --save "$out" --db /tmp/h200.db
done
