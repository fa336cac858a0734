#!/usr/bin/env bash
# Issue 15: Llama-2-70B-shaped (random bf16 weights) tensor-parallel over the GPUs of one H200 host, dense, 25 % depth
# (ShortGPT drop-25: 20 of 80 layers) and 25 % width (LLM-Pruner width-25: 2 of 8 KV groups with their query heads and
# a quarter of the MLP channels; calibrated selections prune with their shape stand-in, recorded per run), suite
# `taxonomy` (prefill bs=1/4096, decode bs=1/ctx 4096), fused mode sharded (`prunereg evaluate --tp N`), measured
# speedup next to the cost model's for N GPUs (benchmarks/tp_roofline.md has the theoretical side for every N).
# Saved evaluations go to results/h200-tp/ (commit them, with the Markdown table benchmarks/h200_tp.md).
# Usage: bash benchmarks/h200_tp.sh [TP...]   (default: 2 4 8, those the host has GPUs for). Run from the
# repository root on the device machine with the wheels of pydantic, SQLAlchemy, Alembic and jsonschema in .whl/
# (README, "Measuring on a GPU"); one (N, submission) per evaluate, so a later call can take the ones left.
# Host memory: the model is built and pruned on the host (dense 138 GB, the pruned copy up to 138 GB) and the
# shards travel through shared memory (/dev/shm as large as both models' shards): a 4- or 8-GPU host.
set -uo pipefail
ulimit -n "$(ulimit -Hn)"  # torch.multiprocessing shares each tensor of the shards by an open descriptor: ~1500 here
degrees=("$@"); [ ${#degrees[@]} -gt 0 ] || degrees=(2 4 8)
source benchmarks/device_env.sh
out=${OUT:-/tmp/out}; saved=/tmp/results/h200-tp; mkdir -p "$saved" "$out"
gpus=$(nvidia-smi --query-gpu=name --format=csv,noheader | wc -l)
nvidia-smi --query-gpu=name,driver_version,clocks.sm,temperature.gpu --format=csv
nvidia-smi topo -m
df -h /dev/shm; free -g
for tp in "${degrees[@]}"; do
  if [ "$tp" -gt "$gpus" ]; then echo "--tp $tp: only $gpus GPUs here, skipped"; continue; fi
  for run in "dense dense" "shortgpt drop-25" "llm-pruner width-25"; do
    read -r slug point <<< "$run"
    start=$SECONDS
    timeout 3000 python3 -m prunereg.cli evaluate "submissions/$slug.json" --device cuda --model llama-2-70b \
      --scenarios taxonomy --tp "$tp" --mode fused --repeats 10 --warmup 2 --point "$point" --save "$saved" \
      --db /tmp/tp.db > "/tmp/results/$slug-tp$tp.log" 2>&1 \
      && echo "--tp $tp $slug $point: ok in $((SECONDS - start)) s" \
      || { echo "--tp $tp $slug $point: FAILED after $((SECONDS - start)) s"; tail -3 "/tmp/results/$slug-tp$tp.log"; }
    tar czf "$out/h200-tp.tgz" -C /tmp results  # after each one: a killed run still brings back the rest
  done
done
nvidia-smi --query-gpu=clocks.sm,temperature.gpu --format=csv
python3 benchmarks/markdown_table.py /tmp/tp.db | tee /tmp/results/h200_tp.md
tar czf "$out/h200-tp.tgz" -C /tmp results
