"""Every input file goes through spec/jsonfile.py: submissions (`prunereg validate`) and checkpoint folders
(`prunereg evaluate --model FOLDER`) that are malformed give one line and exit 1, never a traceback."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from prunereg.cli import app
from prunereg.harness.embedded import MODEL_DIR

ROOT = Path(__file__).resolve().parents[1]
SHORTGPT = ROOT / "submissions" / "shortgpt.json"


def _submission(folder: Path, kind: str) -> Path:
    path = folder / "shortgpt.json"
    source = SHORTGPT.read_text()
    if kind == "symlink":
        path.symlink_to(SHORTGPT)
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "bom":
        path.write_bytes(b"\xef\xbb\xbf" + source.encode())
    elif kind == "utf-16":
        path.write_bytes(source.encode("utf-16"))
    elif kind == "nan":
        path.write_text(source.replace('"year": ', '"year": NaN, "x": ', 1))
    elif kind == "deep":
        path.write_text("[" * 50_000 + "]" * 50_000)
    elif kind == "surrogate":
        path.write_text(source.replace('"name": "ShortGPT"', '"name": "Short\\udfffGPT"', 1))
    elif kind == "oversized":
        path.write_text(" " * 1_000_001 + source)
    return path


@pytest.mark.parametrize("kind", ["symlink", "fifo", "bom", "utf-16", "nan", "deep", "surrogate", "oversized"])
def test_a_malformed_submission_file_is_one_line(kind, tmp_path):
    path = _submission(tmp_path, kind)
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"{path}: /: "), line


def _checkpoint(folder: Path, kind: str) -> Path:
    path = folder / "checkpoint"
    shutil.copytree(MODEL_DIR, path)
    config = path / "config.json"
    if kind == "broken-config":
        config.write_text('{"model_type": "llama", "hidden_size": ')
    elif kind == "config-is-a-list":
        config.write_text("[1, 2]")
    elif kind == "config-links-to-a-fifo":  # a link is followed (hub cache snapshots), to a regular file only
        config.unlink()
        os.mkfifo(path / "fifo")
        config.symlink_to(path / "fifo")
    elif kind == "duplicate-key-config":
        config.write_text(config.read_text().replace("{", '{"model_type": "llama",', 1))
    elif kind == "no-tokenizer":
        for name in ("tokenizer.json", "tokenizer_config.json"):
            (path / name).unlink()
    elif kind == "corrupt-weights":
        (path / "model.safetensors").write_bytes(b"\x00" * 100)
    elif kind == "unknown-model-type":
        config.write_text(json.dumps({**json.loads(config.read_text()), "model_type": "no-such-architecture"}))
    return path


@pytest.mark.parametrize(
    "kind",
    ["broken-config", "config-is-a-list", "config-links-to-a-fifo", "duplicate-key-config", "no-tokenizer",
     "corrupt-weights", "unknown-model-type"],
)  # fmt: skip
def test_a_broken_checkpoint_folder_is_one_line(kind, tmp_path):
    model = _checkpoint(tmp_path, kind)
    args = ["evaluate", str(SHORTGPT), "--model", str(model), "--db", str(tmp_path / "r.db")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    (line,) = [line for line in result.stderr.splitlines() if line.strip()]
    assert line.startswith("error: ") and str(model) in line, line


def test_a_checkpoint_whose_files_are_links_is_read(tmp_path):
    """The Hugging Face cache links every file of a snapshot; such a folder is a checkpoint like any other."""
    from prunereg.harness.models import check_checkpoint

    for name in ("config.json", "tokenizer.json"):
        (tmp_path / name).symlink_to(MODEL_DIR / name)
    check_checkpoint(tmp_path)
