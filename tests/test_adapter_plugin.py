"""An adapter from another package: tests/plugin_example, installed with pip into a throwaway folder.

Commands that should see the plugin run in a subprocess with that folder on PYTHONPATH (the adapter
table is read once per process); this process never sees it, so here the same submission gets the
one line that says no installed package provides the adapter.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest

from prunereg.spec.adapters import BUILT_IN
from prunereg.spec.catalog import EMBEDDED_MODEL
from prunereg.spec.validate import validate_file

EXAMPLE = Path(__file__).parent / "plugin_example"
SUBMISSION = EXAMPLE / "mlp-channels.json"
ROOT = Path(__file__).resolve().parents[1]


def builds_wheels_offline() -> bool:
    try:
        setuptools = tuple(int(part) for part in version("setuptools").split(".")[:2])
    except PackageNotFoundError:
        return False
    return setuptools >= (70, 1) or importlib.util.find_spec("wheel") is not None


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory) -> Path:
    """A folder holding the installed plugin (its module and dist-info with the entry point).

    pip builds from a copy, so no build folder lands in tests/. Where this environment can build a
    wheel itself (setuptools >= 70.1, or an older one with `wheel`), the build needs no network;
    otherwise pip fetches setuptools from PyPI.
    """
    source = shutil.copytree(EXAMPLE, tmp_path_factory.mktemp("source") / "plugin")
    target = tmp_path_factory.mktemp("site")
    offline = ["--no-build-isolation", "--no-index"] if builds_wheels_offline() else []
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", *offline, "--target", str(target), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert installed.returncode == 0, installed.stderr
    return target


def run_with(plugin_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(plugin_path), os.environ.get("PYTHONPATH")]))}
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False
    )


@pytest.mark.slow
def test_the_plugin_is_listed_in_the_open_division(plugin_path):
    result = run_with(plugin_path, "-m", "prunereg.cli", "list", "adapters")
    assert result.returncode == 0, result.stderr
    (line,) = [line for line in result.stdout.splitlines() if "mlp_channels" in line]
    assert "static_width" in line and "MlpChannelsParams" in line and "open" in line
    assert "prunereg-mlp-channels" in line


@pytest.mark.slow
def test_a_submission_naming_it_validates_where_it_is_installed(plugin_path):
    result = run_with(plugin_path, "-m", "prunereg.cli", "validate", str(SUBMISSION))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{SUBMISSION}: ok (MLP channels (plugin example), 1 operating points)"


@pytest.mark.slow
def test_it_evaluates_on_the_embedded_model(plugin_path):
    """The whole pipeline: the plugin's adapter prunes, the trace confirms the declared effects, timing runs."""
    probe = f"""
import json
from prunereg.evaluate import evaluate
from prunereg.spec.catalog import Phase, Scenario
from prunereg.spec.validate import validate_file
submission, problems = validate_file(__import__("pathlib").Path({str(SUBMISSION)!r}))
assert not problems, problems
result = evaluate(submission, {EMBEDDED_MODEL!r}, "cpu", (Scenario(phase=Phase.prefill, batch_size=1, seq_len=32),),
                  warmup=0, repeats=3)
(point,) = result.points
print(json.dumps({{"point": point.operating_point, "parameters": point.stats.parameters,
                  "dense": result.dense_stats.parameters, "latencies": len(point.latency)}}))
"""
    result = run_with(plugin_path, "-c", probe)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["point"] == "mlp-50" and summary["latencies"] == 1
    assert summary["parameters"] < summary["dense"]


@pytest.mark.slow
def test_the_plugin_keeps_the_adapter_contract(plugin_path):
    """The contract suite, parametrized over the table, picks the plugin's row up where it is installed."""
    result = run_with(
        plugin_path,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "tests/test_adapter_contract.py",
        "-k",
        "mlp_channels",
    )
    assert result.returncode == 0, result.stdout[-3000:]
    assert " passed" in result.stdout and "failed" not in result.stdout


def test_without_it_the_same_submission_gets_one_clear_line():
    submission, problems = validate_file(SUBMISSION)
    assert submission is None
    known = ", ".join(sorted(row.name for row in BUILT_IN))
    assert [tuple(p) for p in problems] == [
        (
            "/adapter/name",
            f"adapter 'mlp_channels' is not built in and no installed package provides it (known: {known})",
        )
    ]
