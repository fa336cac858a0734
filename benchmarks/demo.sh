#!/usr/bin/env bash
# `make demo` from a fresh clone of HEAD, install included, timed; then the demo registry's fronts as
# `prunereg frontier` prints them, so what a busy machine puts on a front is on record.
# Output committed as benchmarks/demo.txt (the README's "Two commands" quotes it).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
git clone -q "$root" "$work/prunereg"
cd "$work/prunereg"
echo "prunereg $(git rev-parse --short HEAD), $(nproc) cores, load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
start=$(date +%s)
make demo > "$work/demo.log" 2>&1 || { tail -40 "$work/demo.log"; exit 1; }
echo "make demo from a fresh clone: $(( $(date +%s) - start )) s, load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
for phase in prefill decode; do
  for batch in 1 8; do
    COLUMNS=160 .venv/bin/prunereg frontier --phase "$phase" --batch "$batch" --model prunereg-mini --all
  done
done
