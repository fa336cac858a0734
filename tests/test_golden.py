"""Golden files: what the site's data/leaderboard.json and `prunereg export --format csv` write, byte for byte.

Like MLPerf's submission-checker snapshot tests, a small fixed registry goes through the real code
(ingestion into SQLite, `build_site`, the `prunereg export` command) and the output must equal the
files committed under tests/golden/. A change to what the leaderboard or the export publish (a
column, an order, a rounding, a Pareto flag) then shows up as a diff in review instead of passing
unasserted.

Determinism: fixed by the factory inputs, nothing is normalized. Every run of the registry gets an
environment whose library versions, prunereg version and git revision are given explicitly
(`ENVIRONMENT` below), never read from the machine the tests run on, so `environment_key` and the
`env_*` columns are constants; spec hashes follow from the submissions' content. The registry's
timestamps (`created_at`) reach only the method pages, which are not golden.

After an intended change, rewrite the files and review them:

    .venv/bin/pytest tests/test_golden.py --update-golden
    git diff tests/golden/

then commit the new golden files with the change. Without the option the tests compare only.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from factories import CAPTURE_ERROR, in_mode, make_environment, make_result, make_submission
from pages import export

from prunereg.leaderboard.build import build_site
from prunereg.registry.db import connect
from prunereg.registry.ingest import ingest

GOLDEN = Path(__file__).parent / "golden"
ENVIRONMENT = make_environment(
    python="3.12.3", torch="2.11.0", transformers="5.17.0", prunereg="0.1.0", git_revision="0123abcd", driver="570.86"
)


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """ShortGPT (deepest layers, and Block Influence with its calibration), LLM-Pruner and a dense baseline: one
    eager run each, and ShortGPT's deepest layers again in graph mode with a fallback."""
    path = tmp_path_factory.mktemp("golden") / "registry.db"
    engine = connect(str(path))
    depth = make_submission("shortgpt-golden", name="ShortGPT (golden)")
    width = make_submission("llm-pruner-golden", name="LLM-Pruner (golden)", adapter="width", claims=[])
    dense = make_submission("dense-golden", name="Dense (golden)", adapter="dense", claims=[])
    ingest(engine, depth, make_result(depth, environment=ENVIRONMENT))
    ingest(engine, width, make_result(width, environment=ENVIRONMENT, speedups={"width-25": 1.1, "width-50": 2.3},
                                      losses={"width-25": 0.01, "width-50": None}))  # fmt: skip
    ingest(engine, dense, make_result(dense, environment=ENVIRONMENT, speedups={"dense": 1.0}, losses={"dense": 0.0}))
    calibrated = {"sparsity": 0.25, "selection": "block_influence", "calibration": {"sequences": 16, "length": 128}}
    influence = make_submission(
        "shortgpt-bi-golden", name="ShortGPT BI (golden)", points={"bi-25": calibrated}, claims=[]
    )
    ingest(engine, influence, make_result(influence, environment=ENVIRONMENT, speedups={"bi-25": 1.3},
                                          losses={"bi-25": 0.03}, calibration_seconds=2.5))  # fmt: skip
    graph = make_result(depth, environment=ENVIRONMENT.model_copy(update={"execution_mode": "graph"}))
    ingest(engine, depth, in_mode(graph, "graph", {"drop-50": CAPTURE_ERROR}))
    yield engine, path
    engine.dispose()


def compare(request: pytest.FixtureRequest, name: str, actual: str) -> None:
    """`actual` must equal tests/golden/<name>; with --update-golden it becomes the golden file instead."""
    golden = GOLDEN / name
    if request.config.getoption("--update-golden"):
        GOLDEN.mkdir(exist_ok=True)
        golden.write_text(actual, encoding="utf-8")
        pytest.skip(f"rewrote {golden.relative_to(GOLDEN.parent.parent)}: review `git diff tests/golden/`")
    assert golden.is_file(), f"no {golden.name}: run pytest tests/test_golden.py --update-golden"
    assert actual == golden.read_text(encoding="utf-8"), f"{name} changed: if intended, rerun with --update-golden"


def test_leaderboard_json(registry, tmp_path, request):
    engine, _ = registry
    build_site(engine, tmp_path / "site")
    compare(request, "leaderboard.json", (tmp_path / "site" / "data" / "leaderboard.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("table", ["latency", "quality"])
def test_csv_export(registry, request, table):
    _, path = registry
    compare(request, f"{table}.csv", export(path, "--format", "csv", "--table", table))
