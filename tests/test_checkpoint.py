"""`prunereg prune`: a pruned model round-trips through a plain transformers checkpoint."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from prunereg.adapters import get_adapter
from prunereg.evaluate import apply_point
from prunereg.harness.checkpoint import CheckpointRefused, save_pruned
from prunereg.harness.models import load_model
from prunereg.spec.catalog import EMBEDDED_MODEL
from prunereg.spec.validate import validate_file

ROOT = Path(__file__).resolve().parents[1]
STATIC = [("shortgpt", "drop-50"), ("llm-pruner", "width-50")]


@pytest.fixture(scope="module")
def embedded():
    return load_model(EMBEDDED_MODEL, "cpu", torch.float32)


def pruned(embedded, slug: str, point: str):
    submission, problems = validate_file(ROOT / "submissions" / f"{slug}.json")
    assert submission is not None and not problems
    model, _ = apply_point(submission, embedded, submission.point(point))  # with the point's calibration
    return get_adapter(submission.adapter.name), model


@pytest.mark.parametrize("slug,point", STATIC)
def test_prune_save_reload_gives_identical_logits(embedded, tmp_path, slug, point):
    adapter, model = pruned(embedded, slug, point)
    save_pruned(adapter, model, embedded.tokenizer, tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32, local_files_only=True).eval()
    ids = torch.randint(embedded.architecture.vocab_size, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        torch.testing.assert_close(reloaded(ids).logits, model(ids).logits, rtol=0, atol=0)
    assert sum(p.numel() for p in reloaded.parameters()) == sum(p.numel() for p in model.parameters())


def test_heads_that_do_not_divide_hidden_load_or_are_refused_before_writing(embedded, tmp_path):
    """6 of 8 heads: transformers >= 5.2x validates hidden % heads and refuses such a config; older ones load it."""
    adapter, model = pruned(embedded, "llm-pruner", "width-25")
    try:
        save_pruned(adapter, model, None, tmp_path)
    except CheckpointRefused as err:
        assert "refuses the pruned config" in str(err) and not any(tmp_path.iterdir())
    else:
        reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32, local_files_only=True)
        assert reloaded.config.num_attention_heads == 6


def test_a_family_without_a_plain_config_is_refused(embedded, tmp_path):
    class PerLayer(type(get_adapter("dense"))):
        checkpoint_refusal = "shapes differ per layer"

    with pytest.raises(CheckpointRefused, match="cannot be saved as a checkpoint: shapes differ per layer"):
        save_pruned(PerLayer(), embedded.model, None, tmp_path)
    assert not any(tmp_path.iterdir())


def prune_shortgpt(point: str, out: Path) -> subprocess.CompletedProcess:
    """`prunereg prune` on the shipped ShortGPT submission, as a user runs it."""
    submission = str(ROOT / "submissions" / "shortgpt.json")
    return subprocess.run(
        [sys.executable, "-m", "prunereg.cli", "prune", submission, "--point", point, "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


@pytest.mark.slow
def test_cli_prune_writes_a_loadable_checkpoint(tmp_path):
    out = tmp_path / "drop-25"
    result = prune_shortgpt("drop-25", out)
    assert result.returncode == 0, result.stderr
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 6


def test_cli_prune_names_an_unknown_point(tmp_path):
    result = prune_shortgpt("drop-99", tmp_path / "x")
    assert (
        result.returncode == 1 and "no operating point 'drop-99'" in result.stderr and "Traceback" not in result.stderr
    )
