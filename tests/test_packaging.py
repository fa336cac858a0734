"""The published artifacts: sdist and wheel build without setuptools warnings, the wheel carries the
data the package reads at run time and nothing else, and a user without torch can validate and list."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIGHT_DEPENDENCIES = ["pydantic", "jsonschema", "typer", "rich", "sqlalchemy", "alembic", "jinja2"]
"""What `validate` and `list` import; torch, transformers and psycopg stay out."""
SHIPPED = [
    "prunereg/harness/embedded/model/model.safetensors",
    "prunereg/harness/embedded/model/config.json",
    "prunereg/harness/embedded/model/tokenizer.json",
    "prunereg/harness/embedded/eval.txt",
    "prunereg/harness/embedded/calibration.txt",
    "prunereg/harness/tasks/austen_cloze.yaml",
    "prunereg/harness/tasks/austen_cloze.jsonl",
    "prunereg/harness/tasks/lm_eval_data.py",
    "prunereg/harness/embedded/card.json",
    "prunereg/spec/data/devices.json",
    "prunereg/spec/data/models.json",
    "prunereg/spec/data/scenarios.json",
    "prunereg/spec/schema/submission.schema.json",
    "prunereg/leaderboard/templates/parts.html",
    "prunereg/leaderboard/templates/index.html",
    "prunereg/leaderboard/templates/measured.html",
    "prunereg/leaderboard/templates/reported.html",
    "prunereg/leaderboard/templates/reported_group.html",
    "prunereg/leaderboard/static/leaderboard.js",
    "prunereg/registry/migrations/env.py",
    "prunereg/registry/migrations/script.py.mako",
    "prunereg/registry/migrations/versions/0001_initial.py",
]

pytestmark = pytest.mark.slow


def clean_environment() -> dict[str, str]:
    """This process's environment without what points Python at the checkout or its virtual environment."""
    drop = {"PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "PYTHONDONTWRITEBYTECODE"}
    return {k: v for k, v in os.environ.items() if k not in drop}


def run(command: list[str | Path], cwd: Path) -> str:
    result = subprocess.run([str(c) for c in command], cwd=cwd, env=clean_environment(), capture_output=True, text=True)
    assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> tuple[Path, str]:
    """Both artifacts, the wheel built from the sdist (as `python -m build` does), and the build's log."""
    out = tmp_path_factory.mktemp("dist")
    log = run([sys.executable, "-m", "build", "--no-isolation", "--outdir", out, ROOT], cwd=out)
    return out, log


def test_sdist_and_wheel_build_without_warnings(dist):
    out, log = dist
    assert sorted(p.suffix for p in out.iterdir()) == [".gz", ".whl"]
    assert [line for line in log.splitlines() if re.search(r"warning|would be ignored", line, re.IGNORECASE)] == []


def test_the_wheel_ships_the_package_data_and_only_the_package(dist):
    (wheel,) = dist[0].glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert [n for n in SHIPPED if n not in names] == []
    assert {n.split("/")[0] for n in names} == {"prunereg", "prunereg-0.1.0.dist-info"}
    stray = ("tools", "tests", "benchmarks", "results", "submissions", "site", "build")
    assert [n for n in names if n.split("/")[1] in stray] == []


def test_validate_and_list_run_from_the_wheel_without_torch(dist, tmp_path):
    (wheel,) = dist[0].glob("*.whl")
    env = tmp_path / "env"
    venv.create(env, with_pip=True)
    python, prunereg = env / "bin" / "python", env / "bin" / "prunereg"
    elsewhere = tmp_path / "work"
    elsewhere.mkdir()
    pip = [python, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    run([*pip, "--no-deps", wheel], cwd=elsewhere)
    run([*pip, *LIGHT_DEPENDENCIES], cwd=elsewhere)
    torch = subprocess.run([python, "-c", "import torch"], cwd=elsewhere, env=clean_environment(), capture_output=True)
    assert torch.returncode != 0, "torch must not be importable here, or this test proves nothing"

    submission = shutil.copy(ROOT / "submissions" / "shortgpt.json", elsewhere / "shortgpt.json")
    assert "shortgpt.json: ok" in run([prunereg, "validate", submission], cwd=elsewhere)
    listing = run([prunereg, "list", "adapters"], cwd=elsewhere)
    assert all(name in listing for name in ("dense", "layer_drop", "width", "unstructured")), listing
