#!/usr/bin/env bash
# Every shipped submission on the embedded model on this machine's CPU (ci suite, 30 repeats),
# printed as a Markdown table. Output committed as benchmarks/embedded_cpu.md.
set -euo pipefail
db="$(mktemp -d)/cpu.db"
# submissions/shortgpt-checkpoint.json loads the checkpoint this writes (git-ignored)
.venv/bin/prunereg prune submissions/shortgpt.json --point drop-25 --out submissions/checkpoints/shortgpt-drop-25 > /dev/null
for path in submissions/*.json; do
  .venv/bin/prunereg evaluate "$path" --repeats 30 --db "$db" > /dev/null
done
.venv/bin/python benchmarks/markdown_table.py "$db"
