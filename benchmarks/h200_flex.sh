#!/usr/bin/env bash
# One device call of about 5 minutes: the split-KV kernel's tests (results/<card>-flex/decode-attention-tests.txt),
# benchmarks/flex_decoding.py (why flex_attention's decoding was slower than SDPA in fused mode's decode step, and
# what prunereg's split-KV kernel does) into results/<card>-flex/, then fused mode's, the 2:4 op's and headline_run's
# CUDA-only tests in full (results/<card>-flex/cuda-tests.txt); $OUT/flex.tgz holds results/<card>-flex/. Unpack it at the
# repository root.
#   bash benchmarks/h200_flex.sh
set -uo pipefail
source benchmarks/device_env.sh
out=${OUT:-/tmp/out}; saved=/tmp/results/$card-flex; mkdir -p "$saved" "$out"
{
  nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
  python3 -m pytest -q -p no:cacheprovider tests/test_decode_attention.py 2>&1 | tee "$saved/decode-attention-tests.txt" | tail -3
  timeout 400 python3 benchmarks/flex_decoding.py "$saved" 2>&1 | grep -v -i warn
  tar czf "$out/flex.tgz" -C /tmp results
  python3 -m pytest -q -p no:cacheprovider -m cuda tests/test_fused.py tests/test_adapter_semi_structured.py tests/test_headline_run.py 2>&1 |
    tee "$saved/cuda-tests.txt" | tail -5
} 2>&1 | tee "$saved/log.txt"
tar czf "$out/flex.tgz" -C /tmp results
