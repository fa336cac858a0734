"""benchmarks/headline_run.py, the one-process headline timing: after a submission whose run fell back (a routed MLP,
which no CUDA Graph captures), the process writes the rest of its plan back and exits with RESTART, so that
benchmarks/h200_headline.sh goes on in a fresh process. Only a GPU falls back: on a CPU graph mode is refused whole."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from prunereg.benchmarks.headline_run import RESTART

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="graph mode's fallback needs a CUDA device")
def test_a_fallback_hands_the_rest_of_the_plan_to_a_fresh_process(tmp_path):
    plan, out = tmp_path / "plan.txt", tmp_path / "out"
    plan.write_text("router-tuning mlp-token-16-of-32\nshortgpt drop-25\n")
    command = [sys.executable, "benchmarks/headline_run.py", "prunereg-mini", str(plan), str(out), "--repeats", "3"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == RESTART, done.stdout[-2000:] + done.stderr[-2000:]
    assert "FALLBACK eager" in done.stdout
    assert plan.read_text() == "shortgpt drop-25\n"
    assert [path.name.split("--")[0] for path in out.glob("*--*.json")] == ["router-tuning"]
