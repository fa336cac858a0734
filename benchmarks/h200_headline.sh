#!/usr/bin/env bash
# The paper's headline from the registry: every operating point that carries a reported claim, timed on the lent
# H200 on one catalog model of the claims' shapes (random bf16 weights; calibrated selections prune with their
# shape stand-in, recorded per run), graph mode, suite `headline` (prefill bs=1/8 and decode bs=1/16 at 1024 tokens,
# within LLaMA-1's 2048-token context). Saved evaluations go to results/h200-headline/ (commit them); the Markdown
# table to benchmarks/h200_headline-MODEL.md.
# Usage: bash benchmarks/h200_headline.sh MODEL [SLUG...]   (default: dense, then every submission with a claim on a
# model of MODEL's shapes, in benchmarks/claimed_points.py's order; SLUGs: those, in that order). Run from the repository root on the device
# machine with the wheels of pydantic, SQLAlchemy, Alembic and jsonschema in .whl/ (README, "Measuring on a GPU").
set -uo pipefail
model=$1; shift
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
mkdir -p /tmp/pkg && ln -sfn "$PWD" /tmp/pkg/prunereg
export PYTHONPATH=/tmp/site:/tmp/pkg PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
out=${OUT:-/tmp/out}; saved=/tmp/results/h200-headline; mkdir -p "$saved" "$out"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,temperature.gpu --format=csv
python3 benchmarks/claimed_points.py "$model" > /tmp/plan.txt || exit 1
if [ $# -gt 0 ]; then  # the given submissions, in the given order
  for slug in "$@"; do grep -E "^$slug " /tmp/plan.txt; done > /tmp/plan.sel; mv /tmp/plan.sel /tmp/plan.txt
fi
{ echo dense dense; cat /tmp/plan.txt; } | while read -r slug points; do
  start=$SECONDS
  args=(); for p in $points; do args+=(--point "$p"); done
  timeout 300 python3 -m prunereg.cli evaluate "submissions/$slug.json" --device cuda --model "$model" \
    --scenarios headline --mode graph --repeats 10 --warmup 2 "${args[@]}" --save "$saved" --db /tmp/headline.db \
    > "/tmp/results/$slug-$model.log" 2>&1 \
    && echo "$slug ($points): ok in $((SECONDS - start)) s" || { echo "$slug: FAILED"; tail -3 "/tmp/results/$slug-$model.log"; }
  tar czf "$out/h200-headline-$model.tgz" -C /tmp results  # after each one: a killed run still brings back the rest
done
nvidia-smi --query-gpu=clocks.sm,temperature.gpu --format=csv
python3 benchmarks/markdown_table.py /tmp/headline.db | tee "/tmp/results/h200_headline-$model.md"
tar czf "$out/h200-headline-$model.tgz" -C /tmp results
