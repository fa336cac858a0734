"""`prunereg sweep` on a local two-CPU Ray cluster, into PostgreSQL: every point stored exactly once, a killed
worker's task retried with only its missing points measured, and failures stored and shown on the site.

The cluster and PostgreSQL tests are slow (Ray starts in about 7 s, each evaluation of the embedded model takes a
few seconds on one CPU) and skip where PRUNEREG_TEST_POSTGRES_URL is unset; latency only (no quality tasks), three
repeats and no warmup keep them to about a minute and a half on two cores.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from backends import postgres_schema_url
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from prunereg.registry.db import connect
from prunereg.registry.schema import FailedMeasurement, LatencyMeasurement, OperatingPointRecord, Run
from prunereg.spec.catalog import suites
from prunereg.spec.sweep import Sweep, validate_sweep

ROOT = Path(__file__).resolve().parents[1]
SUBMISSIONS = ROOT / "submissions"
FAST = {"repeats": 3, "warmup": 0, "tasks": []}
"""Latency only, three repeats: the sweep machinery is under test here, not the measurements."""
CI_SCENARIOS = len(suites()["ci"])


def prunereg(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PRUNEREG_DB"}
    return subprocess.run([sys.executable, "-m", "prunereg.cli", *args], capture_output=True, text=True, env=env)


def test_a_sweep_is_the_product_of_its_lists():
    sweep = Sweep.model_validate(
        {"submissions": ["a.json", {"path": "b.json", "points": ["p"]}], "models": ["m1", "m2"], "suites": ["ci"]}
    )
    evaluations = sweep.evaluations()
    assert len(evaluations) == 4
    assert {(e.submission.path, e.model, e.mode) for e in evaluations} == {
        ("a.json", "m1", "eager"), ("a.json", "m2", "eager"), ("b.json", "m1", "eager"), ("b.json", "m2", "eager"),
    }  # fmt: skip
    cuda = Sweep.model_validate({"submissions": ["a.json"], "device": "cuda", "device_kind": "H200"})
    assert cuda.execution_modes() == ["graph"]


@pytest.mark.parametrize(
    ("document", "pointer", "words"),
    [
        ({"submissions": ["a.json"], "suites": ["nope"]}, "/suites", "unknown scenario suite 'nope'"),
        ({"submissions": ["a.json"], "modes": ["graph"]}, "", "need device cuda"),
        ({"submissions": ["a.json"], "colour": "red"}, "/colour", "Extra inputs"),
        ({"submissions": []}, "/submissions", "at least 1"),
        ({"submissions": ["a.json"], "device_kind": "H200; rm"}, "/device_kind", "pattern"),
    ],
)
def test_a_sweep_file_is_validated_like_a_submission(document, pointer, words):
    sweep, problems = validate_sweep(document)
    assert sweep is None
    assert any(p.pointer == pointer and words in p.message for p in problems), problems


def test_sqlite_is_refused_with_a_remote_cluster_before_ray_starts(tmp_path):
    result = prunereg(
        "sweep", "--submission", str(SUBMISSIONS / "dense.json"), "--address", "10.1.2.3:6379",
        "--db", str(tmp_path / "registry.db"),
    )  # fmt: skip
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: the registry is SQLite") and "PostgreSQL" in line
    assert not (tmp_path / "registry.db").exists()


@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster of two CPUs: two evaluations run at once."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture
def postgres():
    with postgres_schema_url() as url:
        yield url


def runs_per_point(url: str) -> dict[str, list[int]]:
    """For each operating point name, the number of latency rows of each of its runs."""
    engine = connect(url)
    stmt = (
        select(OperatingPointRecord.name, Run.id, func.count(LatencyMeasurement.id))
        .join(Run.operating_point)
        .join(Run.latency)
        .group_by(OperatingPointRecord.name, Run.id)
    )
    out: dict[str, list[int]] = {}
    with Session(engine) as session:
        for name, _, count in session.execute(stmt):
            out.setdefault(name, []).append(count)
    engine.dispose()
    return out


def failure_rows(url: str) -> list[tuple[str, str, str]]:
    engine = connect(url)
    stmt = select(OperatingPointRecord.name, FailedMeasurement.scenario, FailedMeasurement.kind)
    with Session(engine) as session:
        rows = session.execute(stmt.join(FailedMeasurement.operating_point)).all()
    engine.dispose()
    return [(name, scenario, kind) for name, scenario, kind in rows]


@pytest.mark.slow
@pytest.mark.postgres
def test_three_submissions_and_a_failure_into_postgresql(cluster, postgres, tmp_path):
    """The CLI joins the running cluster (--address), stores every point once, stores the point whose checkpoint
    is missing as failed in every scenario, and the site shows it; a rerun measures nothing; once the checkpoint
    exists, a rerun measures it and the site shows the run instead of the failure, which is kept."""
    from prunereg.leaderboard.build import build_site

    folder = tmp_path / "submissions"
    folder.mkdir()
    shutil.copy(SUBMISSIONS / "shortgpt-checkpoint.json", folder)  # its checkpoint folder does not exist here
    sweep_file = tmp_path / "sweep.json"
    sweep_file.write_text(
        json.dumps(
            {
                "submissions": [
                    str(SUBMISSIONS / "dense.json"),
                    {"path": str(SUBMISSIONS / "shortgpt.json"), "points": ["drop-25"]},
                    {"path": str(SUBMISSIONS / "llm-pruner.json"), "points": ["width-25"]},
                    "submissions/shortgpt-checkpoint.json",
                ],
                **FAST,
            }
        )
    )
    result = prunereg("sweep", str(sweep_file), "--address", cluster, "--db", postgres)
    assert result.returncode == 1, result.stderr  # one evaluation failed
    assert "1 of 4 evaluations failed" in result.stderr
    assert "Traceback" not in result.stderr
    assert "refused at applying the adapter" in result.stdout and "no checkpoint folder" in result.stdout
    assert runs_per_point(postgres) == {"dense": [CI_SCENARIOS], "drop-25": [CI_SCENARIOS], "width-25": [CI_SCENARIOS]}
    failed = failure_rows(postgres)
    assert sorted(failed) == sorted(("drop-25", s.name, "refused") for s in suites()["ci"])

    site = tmp_path / "site"
    engine = connect(postgres)
    build_site(engine, site)
    measured = (site / "measured.html").read_text()
    assert measured.count('<tr class="failed" data-kind="refused"') == CI_SCENARIOS  # one per scenario's group
    assert "ShortGPT (submitted checkpoint)" in measured and "no checkpoint folder" in measured
    method = (site / "methods" / "shortgpt-checkpoint.html").read_text()
    assert "Failed measurements" in method and "Not evaluated yet" not in method

    again = prunereg("sweep", str(sweep_file), "--address", cluster, "--db", postgres)
    assert again.returncode == 1
    assert runs_per_point(postgres) == {"dense": [CI_SCENARIOS], "drop-25": [CI_SCENARIOS], "width-25": [CI_SCENARIOS]}
    assert len(failure_rows(postgres)) == 2 * CI_SCENARIOS  # the second failure is another record

    pruned = prunereg(
        "prune", str(SUBMISSIONS / "shortgpt.json"), "--point", "drop-25",
        "--out", str(folder / "checkpoints" / "shortgpt-drop-25"),
    )  # fmt: skip
    assert pruned.returncode == 0, pruned.stderr
    fixed = prunereg("sweep", str(sweep_file), "--address", cluster, "--db", postgres)
    assert fixed.returncode == 0, fixed.stderr
    assert runs_per_point(postgres)["drop-25"] == [CI_SCENARIOS, CI_SCENARIOS]  # shortgpt's, and the checkpoint's
    assert len(failure_rows(postgres)) == 2 * CI_SCENARIOS  # kept
    build_site(engine, site)
    assert 'class="failed"' not in (site / "measured.html").read_text()
    method = (site / "methods" / "shortgpt-checkpoint.html").read_text()
    assert f"{2 * CI_SCENARIOS} earlier failed measurements, measured since" in method
    engine.dispose()


@pytest.mark.slow
@pytest.mark.postgres
def test_a_killed_worker_is_retried_and_nothing_is_stored_twice(cluster, postgres):
    """SIGKILL the worker once it has stored its first point: Ray retries the task on a new worker, which finds
    that point stored and measures only the other two."""
    from prunereg.cli.sweep import run_sweep
    from prunereg.spec.validate import validate_file

    points = ["drop-25", "drop-50", "drop-7-of-32"]
    sweep = Sweep.model_validate({"submissions": [{"path": "shortgpt.json", "points": points}], **FAST})
    spec, _ = validate_file(SUBMISSIONS / "shortgpt.json")
    assert spec is not None
    starts: list[int] = []
    killed: list[int] = []

    def on_event(task, event) -> None:
        if event.kind == "start":
            starts.append(event.pid)
        if event.kind == "measured" and event.point and not killed:
            os.kill(starts[-1], signal.SIGKILL)
            killed.append(starts[-1])

    connect(postgres).dispose()  # the CLI migrates the registry before the workers open it
    (task,) = run_sweep(sweep, {"shortgpt.json": (spec, SUBMISSIONS)}, postgres, on_event)
    assert killed and len(starts) == 2 and starts[1] != killed[0], (starts, killed)
    assert task.outcome is not None and not task.outcome.failures
    assert task.measured == set(points)
    reused = task.outcome.reused  # the retry's own view: what the killed worker stored first
    assert reused == points[: len(reused)] and reused and task.outcome.measured == points[len(reused) :]
    assert runs_per_point(postgres) == {point: [CI_SCENARIOS] for point in points}
    assert failure_rows(postgres) == []
    assert Counter(task.nodes) == Counter({task.nodes[0]: 2})


@pytest.mark.slow
@pytest.mark.postgres
def test_a_task_ray_gives_up_on_is_stored_as_failed_for_its_missing_points(cluster, postgres):
    """No retries: the worker killed after its first point leaves that point stored and the others failed
    ('worker-lost', recorded by the driver), never missing."""
    from prunereg.cli.sweep import run_sweep
    from prunereg.spec.validate import validate_file

    points = ["drop-25", "drop-50"]
    sweep = Sweep.model_validate(
        {"submissions": [{"path": "shortgpt.json", "points": points}], "max_retries": 0, **FAST}
    )
    spec, _ = validate_file(SUBMISSIONS / "shortgpt.json")
    assert spec is not None
    starts: list[int] = []

    def on_event(task, event) -> None:
        if event.kind == "start":
            starts.append(event.pid)
        if event.kind == "measured" and event.point:
            os.kill(starts[-1], signal.SIGKILL)

    connect(postgres).dispose()
    (task,) = run_sweep(sweep, {"shortgpt.json": (spec, SUBMISSIONS)}, postgres, on_event)
    assert len(starts) == 1
    assert runs_per_point(postgres) == {"drop-25": [CI_SCENARIOS]}
    assert sorted(failure_rows(postgres)) == sorted(("drop-50", s.name, "worker-lost") for s in suites()["ci"])
    assert task.outcome is not None and {f.operating_point for f in task.outcome.failures} == {"drop-50"}
