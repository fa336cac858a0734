"""An evaluation killed halfway leaves no partial run; a rerun measures only what is missing, and its saved file
keeps what the killed one saved."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMMAND = [
    sys.executable,
    "-m",
    "prunereg.cli",
    "evaluate",
    str(ROOT / "submissions" / "shortgpt.json"),
    *("--point", "drop-25", "--point", "drop-50"),  # the demo's points (the file also has its papers')
    "--repeats",
    "25",
    "--max-repeats",
    "25",  # no repeats added on a noisy machine: the point is timed at a known length
]


def rows(db: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(db, timeout=30) as connection:
        return connection.execute(sql).fetchall()


def runs_stored(db: Path) -> int:
    try:
        return rows(db, "SELECT count(*) FROM runs")[0][0]
    except sqlite3.OperationalError:  # the registry is still being created
        return 0


@pytest.mark.slow
def test_sigkill_after_the_first_point_then_resume(tmp_path):
    db, saved = tmp_path / "registry.db", tmp_path / "saved"
    command = [*COMMAND, "--db", str(db), "--save", str(saved)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while runs_stored(db) == 0 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=30) == -signal.SIGKILL, "the evaluation ended before it could be killed"

    per_run = rows(db, "SELECT run_id, count(*) FROM latency_measurements GROUP BY run_id")
    assert per_run and all(count == 4 for _, count in per_run), f"a partial run is visible: {per_run}"
    assert len(rows(db, "SELECT id FROM runs")) == len(per_run)
    first = rows(db, "SELECT id, run_id, median FROM latency_measurements ORDER BY id")

    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "already in the registry, not measured again: drop-25" in done.stdout
    assert rows(db, "SELECT count(*) FROM runs")[0][0] == 2
    assert rows(db, "SELECT id, run_id, median FROM latency_measurements ORDER BY id")[: len(first)] == first
    assert rows(db, "SELECT count(*) FROM latency_measurements")[0][0] == 8
    (file,) = saved.iterdir()  # the resumed run measured drop-50 alone; the killed one had saved drop-25
    points = json.loads(file.read_text())["result"]["points"]
    assert [p["operating_point"] for p in points] == ["drop-25", "drop-50"]
    assert [m["median"] for m in points[0]["latency"]] == [m for (_, _, m) in first]
