#!/usr/bin/env bash
# The paper's headline from the registry: every operating point that carries a reported claim, timed on the lent
# GPU on one catalog model of the claims' shapes (random bf16 weights; calibrated selections prune with their
# shape stand-in, recorded per run), in execution mode MODE (default graph; fused is prunereg's own forward, the
# fastest it has), suite `headline` (prefill bs=1/8 and decode bs=1/16 at 1024 tokens,
# within LLaMA-1's 2048-token context), in one process (benchmarks/headline_run.py; a fresh one after a failed
# capture). Saved evaluations go to results/h200-headline/ (h100-headline/ if an H100 came; results/h200-headline-MODE/ for
# another MODE; commit them), packed into $OUT/h200-headline-MODEL.tgz; then, anywhere,
#   python3 benchmarks/headline_measured.py    (writes benchmarks/headline_measured.md)
# Usage: [MODE=fused] bash benchmarks/h200_headline.sh MODEL [SLUG...]   (default: dense, then every submission with a claim on a
# model of MODEL's shapes, in benchmarks/claimed_points.py's order, less those whose saved evaluation the checkout
# already holds in the results folder of this card and mode, so a run cut by its limit goes on where it stopped;
# REDO=1 times them all again; SLUGs: those, in that order, saved or not). LIMIT_S (default
# 540) bounds the timing processes together, so the saved evaluations come back inside a device call of 600 s. Run
# from the repository root on the device machine with the wheels of README "Measuring on a GPU" in .whl/.
set -uo pipefail
model=$1; shift
source benchmarks/device_env.sh
mode=${MODE:-graph}; out=${OUT:-/tmp/out}; saved=/tmp/results/$card-headline$([ "$mode" = graph ] || echo "-$mode"); mkdir -p "$saved" "$out"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,temperature.gpu --format=csv
python3 benchmarks/claimed_points.py "$model" > /tmp/plan.txt || exit 1
if [ $# -gt 0 ]; then  # the given submissions, in the given order
  for slug in "$@"; do grep -E "^$slug " /tmp/plan.txt; done > /tmp/plan.sel; mv /tmp/plan.sel /tmp/plan.txt
elif [ -z "${REDO:-}" ]; then  # resume: leave out what the checkout already holds for MODEL in this card and mode
  committed=results/${saved#/tmp/results/}
  while read -r slug points; do
    compgen -G "$committed/$slug--$model--*.json" > /dev/null || echo "$slug $points"
  done < /tmp/plan.txt > /tmp/plan.sel; mv /tmp/plan.sel /tmp/plan.txt
  echo "resuming: $(wc -l < /tmp/plan.txt) submissions not yet in $committed"
fi
dense=--with-dense; limit=${LIMIT_S:-540}; SECONDS=0
while :; do  # exit 3: a capture failed and poisoned the process (headline_run.py); the rest of the plan goes on afresh
  timeout $((limit - SECONDS)) python3 benchmarks/headline_run.py "$model" /tmp/plan.txt "$saved" --mode "$mode" $dense 2>&1 \
    | grep -v -i warn | tee -a "$saved/log-$model.txt"
  [ "${PIPESTATUS[0]}" -eq 3 ] && [ "$SECONDS" -lt "$limit" ] || break
  dense=
done
nvidia-smi --query-gpu=clocks.sm,temperature.gpu --format=csv
tar czf "$out/h200-headline-$model.tgz" -C /tmp results
