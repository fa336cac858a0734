#!/usr/bin/env bash
# Every family of the taxonomy on Llama-3.1-8B shapes (random bf16 weights) on the lent GPU, prefill
# bs=1/4096 and decode bs=1/ctx 4096 (suite `taxonomy`), in execution mode MODE (default eager; graph and
# fused are issue 12's headline modes), after the CUDA-only tests (2:4 sparse kernel = masked dense; compiled
# flex attention = masked SDPA). Saved evaluations go to results/h200-taxonomy/ for eager,
# results/h200-taxonomy-MODE/ otherwise (h100-… if an H100 came; commit them); the Markdown table to
# benchmarks/<card>_taxonomy[_MODE].md. Each submission gets at most PER_SUBMISSION_S (default 150 s), so ten take
# more than one device call of 600 s: name three or four per call. In fused mode each scenario compiles its pair
# afresh (the harness frees dynamo's caches between scenarios): give ShortGPT's six points more, e.g. 280 s.
# MInference's six points took more than 200 s on an H100 in fused mode (each pair fell back to graph mode) and
# were cut before the file was written; `evaluate --save` now writes it after every point.
# Usage: [MODE=graph|fused] bash benchmarks/h200_taxonomy.sh [SUBMISSION...]. Run from the repository root on
# the device machine with the wheels of README "Measuring on a GPU" in .whl/.
set -uo pipefail
source benchmarks/device_env.sh
mode=${MODE:-eager}; name=$card-taxonomy${MODE:+-$mode}
out=${OUT:-/tmp/out}; saved=/tmp/results/$name; mkdir -p "$saved" "$out"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,temperature.gpu --format=csv
python3 -c "import torch; print('torch', torch.__version__, 'cusparselt', torch.backends.cusparselt.is_available())"
python3 -m pytest -q --tb=short -p no:cacheprovider tests/test_adapter_semi_structured.py tests/test_adapter_sparse_attention.py -k cuda 2>&1 | tail -25
submissions=("$@")  # default: every family
[ ${#submissions[@]} -gt 0 ] || submissions=(dense sparsegpt-2-4 shortgpt llm-pruner wanda svd-llm slicegpt attention-drop mixture-of-depths minference)
for s in "${submissions[@]}"; do
  timeout "${PER_SUBMISSION_S:-150}" python3 -m prunereg.cli evaluate "submissions/$s.json" --device cuda --model llama-3.1-8b --scenarios taxonomy --mode "$mode" \
    --repeats 10 --warmup 2 --save "$saved" --db "/tmp/$name.db" > "/tmp/results/$s.log" 2>&1 \
    && echo "$s: ok" || { echo "$s: FAILED"; tail -3 "/tmp/results/$s.log"; }
  tar czf "$out/$name.tgz" -C /tmp results  # after each one: a killed run still brings back the rest
done
nvidia-smi --query-gpu=clocks.sm,temperature.gpu --format=csv
python3 benchmarks/markdown_table.py "/tmp/$name.db" | tee "/tmp/results/${name//-/_}.md"
tar czf "$out/$name.tgz" -C /tmp results
