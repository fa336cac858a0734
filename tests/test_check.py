"""`prunereg check` (every gate a pull request's files pass, and their division), the division of the registry's
methods on the site, and `prunereg diff` (front changes as Markdown a pull-request comment can carry)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from factories import claim, make_environment, make_result, make_submission
from pages import check_html5_strict
from typer.testing import CliRunner

from prunereg.cli import app
from prunereg.leaderboard.build import build_site
from prunereg.registry.db import connect
from prunereg.registry.ingest import ingest
from prunereg.registry.queries import methods
from prunereg.spec.division import division

ROOT = Path(__file__).resolve().parents[1]
LINE = re.compile(r"^(?P<file>.+?): (?P<pointer>/\S*): (?P<message>.+)$")
MOD = "mixture-of-depths"
MOD_RESULT = ROOT / "results" / "h200-faithful" / "mixture-of-depths--prunereg-mini--h200-890cf59ee22ed264.json"
"""A committed saved evaluation (trained weights, quality measured) whose embedded submission is the current one."""


def run(*args: str):
    return CliRunner().invoke(app, list(args))


def problems(result) -> list[tuple[str, str, str]]:
    """(file, pointer, message) of every line on stderr; each must be one such line."""
    lines = result.stderr.splitlines()
    assert lines and all(LINE.match(line) for line in lines), result.stderr
    return [(m["file"], m["pointer"], m["message"]) for m in map(LINE.match, lines) if m]


@pytest.fixture
def repo(tmp_path, monkeypatch) -> Path:
    """A repository (the working folder) with one registered submission and a committed saved evaluation of it."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "submissions").mkdir()
    shutil.copy(ROOT / "submissions" / f"{MOD}.json", tmp_path / "submissions")
    (tmp_path / "results" / "gpu").mkdir(parents=True)
    shutil.copy(MOD_RESULT, tmp_path / "results" / "gpu" / MOD_RESULT.name)
    return tmp_path


# --- divisions --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("adapters", "models", "quality", "claims", "expected", "reason"),
    [
        (["layer_drop"], ["prunereg-mini"], True, 0, "closed", "quality measured by prunereg"),
        (["layer_drop"], [], False, 0, "closed", "no claims"),
        (["layer_drop"], ["prunereg-mini"], True, 5, "closed", "5 claims shown apart"),
        (["layer_drop"], ["llama-2-7b"], False, 5, "open", "quality only claimed (5 claims)"),
        (["checkpoint"], ["prunereg-mini"], True, 0, "open", "pruned outside prunereg"),
        (["my_plugin"], ["prunereg-mini"], True, 0, "open", "not built in"),
        (["layer_drop", "checkpoint"], [], True, 0, "open", "'checkpoint'"),
        (["width"], ["prunereg-mini", "pruned-folder"], True, 0, "open", "'pruned-folder', not a catalog model"),
    ],
)
def test_division_rule(adapters, models, quality, claims, expected, reason):
    verdict = division(adapters, models, quality, claims)
    assert verdict.division == expected and reason in verdict.reason


# --- check --------------------------------------------------------------------------------------------------


def test_check_passes_the_shipped_submissions_and_results_without_importing_torch():
    probe = (
        "import sys; from prunereg.cli import app\n"
        "try:\n    app(['check'])\nexcept SystemExit as e:\n    code = e.code\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'check imported torch'\n"
        "sys.exit(code)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    current = sorted((ROOT / "submissions").glob("*.json"))
    saved = [line for line in lines if line.startswith("results/")]
    assert all(": ok (" in line for line in lines) and len(saved) == len(list((ROOT / "results").rglob("*--*.json")))
    assert len(lines) == len(current) + len(list((ROOT / "submissions").glob("superseded/*/*.json"))) + len(saved)
    by_file = {line.split(": ok (")[0]: line for line in lines}
    assert "closed division" in by_file["submissions/dense.json"]
    assert "open division: adapter 'checkpoint'" in by_file["submissions/shortgpt-checkpoint.json"]
    assert "open division: quality only claimed" in by_file["submissions/slicegpt.json"]
    assert re.search(r", [1-9]\d* saved results?\); closed division", by_file[f"submissions/{MOD}.json"])


def test_check_finds_the_saved_results_of_a_submission(repo):
    result = run("check", f"submissions/{MOD}.json")
    assert result.exit_code == 0, result.stderr
    (line,) = result.stdout.splitlines()
    assert line.startswith(f"submissions/{MOD}.json: ok (Mixture-of-Depths: 2 operating points, 0 claims, 1 saved")
    assert "closed division: built-in adapter 'token_routing', quality measured by prunereg" in line


def test_check_reports_a_saved_result_that_contradicts_its_submission(repo):
    path = repo / "results" / "gpu" / MOD_RESULT.name
    document = json.loads(path.read_text())
    document["result"]["points"][0]["latency"][0]["median"] *= 1.5
    document["result"]["points"][1]["operating_point"] = document["result"]["points"][0]["operating_point"]
    path.write_text(json.dumps(document))
    result = run("check", f"submissions/{MOD}.json")
    assert result.exit_code == 1 and result.stdout == ""
    found = problems(result)
    assert {f for f, _, _ in found} == {f"results/gpu/{MOD_RESULT.name}"}
    pointers = {p for _, p, _ in found}
    assert "/result/points/0/latency/0/median" in pointers and "/result/points/1/operating_point" in pointers
    both = run("check", f"submissions/{MOD}.json", f"results/gpu/{MOD_RESULT.name}")  # found and named: once
    assert both.exit_code == 1 and problems(both) == found


def test_a_changed_submission_no_longer_owns_its_results_and_a_result_names_its_own(repo):
    """Results belong to the exact version they embed: edit the submission and they are its earlier version's;
    named on the command line, a result is checked against the registered submission and refused."""
    sub = repo / "submissions" / f"{MOD}.json"
    document = json.loads(sub.read_text())
    document["method"]["description"] += " Edited."
    sub.write_text(json.dumps(document))
    result = run("check", f"submissions/{MOD}.json")
    assert result.exit_code == 0 and ", 0 saved results); closed division: built-in adapter" in result.stdout
    saved = f"results/gpu/{MOD_RESULT.name}"
    refused = run("check", saved)
    assert refused.exit_code == 1
    assert [(f, p) for f, p, _ in problems(refused)] == [(saved, "/submission")]


def test_check_reports_every_problem_of_every_file_one_line_each(repo):
    broken = make_submission("broken", claims=[claim("drop-99", 9.0)]).model_dump(mode="json")
    (repo / "submissions" / "broken.json").write_text(json.dumps(broken))
    elsewhere = make_submission(
        "elsewhere",
        claims=[
            {**claim("drop-25", 9.0), "base_model": "my-own-llama", "provenance": {"source": "measured", "by": "me"}}
        ],
    ).model_dump(mode="json")
    (repo / "submissions" / "elsewhere.json").write_text(json.dumps(elsewhere))
    blank = make_submission("blank").model_dump(mode="json")
    blank["quality_claims"][0]["provenance"]["row"] = "   "
    (repo / "submissions" / "blank.json").write_text(json.dumps(blank))
    files = ["submissions/broken.json", "submissions/elsewhere.json", "submissions/blank.json", "submissions/gone.json"]
    result = run("check", *files, f"submissions/{MOD}.json")
    assert result.exit_code == 1 and "Traceback" not in result.stderr
    assert [(f, p) for f, p, _ in problems(result)] == [
        ("submissions/broken.json", "/quality_claims/0/operating_point"),
        ("submissions/elsewhere.json", "/quality_claims/0/base_model"),
        ("submissions/blank.json", "/quality_claims/0/provenance/row"),
        ("submissions/gone.json", "/"),
    ]
    assert result.stdout.startswith(f"submissions/{MOD}.json: ok (")  # clean files still get their line


def test_a_submission_of_claims_only_is_open_and_a_checkpoint_too(repo):
    for sub in (make_submission("claims-only"), make_submission("no-claims", claims=[])):
        (repo / "submissions" / f"{sub.method.slug}.json").write_text(sub.model_dump_json())
    shutil.copy(ROOT / "submissions" / "shortgpt-checkpoint.json", repo / "submissions")
    result = run("check")
    assert result.exit_code == 0, result.stderr
    line = {x.split(":")[0]: x for x in result.stdout.splitlines()}
    assert (
        "1 claim, 0 saved results); open division: quality only claimed (1 claim)"
        in line["submissions/claims-only.json"]
    )
    assert "closed division" in line["submissions/no-claims.json"]
    assert "open division: adapter 'checkpoint'" in line["submissions/shortgpt-checkpoint.json"]
    assert "closed division" in line[f"results/gpu/{MOD_RESULT.name}"]  # without FILES, every saved result too


# --- the registry and the site ------------------------------------------------------------------------------


def test_methods_carry_their_division_and_the_site_shows_it(engine, tmp_path):
    measured = make_submission("measured-test")  # one claim, and quality measured by prunereg
    ingest(engine, measured, make_result(measured))
    claimed = make_submission("claimed-test", adapter="width")
    ingest(engine, claimed, None)
    speed_only = make_submission("speed-only", claims=[])
    ingest(engine, speed_only, make_result(speed_only, losses={}, model="llama-2-7b", weights="random"))
    found = {m.slug: m for m in methods(engine)}
    assert (found["measured-test"].division, found["claimed-test"].division) == ("closed", "open")
    assert found["measured-test"].division_reason.endswith("its 1 claim shown apart")
    assert "quality only claimed (1 claim)" in found["claimed-test"].division_reason
    assert found["speed-only"].division == "closed"
    site = build_site(engine, tmp_path / "site").parent
    index = (site / "index.html").read_text()
    check_html5_strict(index, site / "index.html")
    assert re.search(r'data-division="open" title="[^"]*quality only claimed[^"]*">open division</span>', index)
    page = (site / "methods" / "claimed-test.html").read_text()
    check_html5_strict(page, site / "methods" / "claimed-test.html")
    assert '<dt>Division</dt><dd class="division" data-division="open">open: quality only claimed' in page


# --- diff ---------------------------------------------------------------------------------------------------


def _registry(path: Path, *subs_and_speedups, paired: bool = True) -> str:
    engine = connect(str(path))
    for sub, speedups, losses in subs_and_speedups:
        ingest(engine, sub, make_result(sub, speedups=speedups, losses=losses, paired=paired))
    engine.dispose()
    return str(path)


DEPTH = make_submission("depth-test", claims=[])
WIDTH = make_submission("width-test", adapter="width", claims=[], name="Width [x](https://example.org) @someone |")


def test_diff_names_the_points_that_entered_and_left_and_the_bands_that_moved(tmp_path):
    depth = (DEPTH, {"drop-25": 1.3, "drop-50": 1.9}, {"drop-25": 0.03, "drop-50": 0.2})
    old = _registry(tmp_path / "old.db", depth)
    new = _registry(
        tmp_path / "new.db", depth, (WIDTH, {"width-25": 1.6, "width-50": 2.0}, {"width-25": 0.04, "width-50": 0.15})
    )
    result = run("diff", old, new)
    assert result.exit_code == 0, result.stderr
    text = result.stdout
    assert text.startswith("## Pareto fronts: base branch → this pull request\n\n2 groups changed, 0 unchanged.")
    section = text.split("### ")[1]
    assert section.startswith("measured quality · prunereg-mini · NVIDIA H200 · bfloat16 · eager · decode-b1-c256\n")
    name = r"Width \[x\](https://example.org) @​someone \|"  # inert: no link, no mention, no extra cell
    version = f"{WIDTH.spec_hash()[:8]} · {make_environment().key()[:8]}"
    assert f"| entered | {name} | width-25 | static NK, width | 1.60× | 4.0 % | {version} |" in section
    assert "| left | Depth Test | drop-50 |" in section  # width-50 is faster at less loss
    assert "- before: dense baseline 0–2 %; static M, depth 3–20 %" in section
    assert "- after: dense baseline 0–2 %; static M, depth 3 %; static NK, width 4–20 %" in section
    unchanged = run("diff", new, new, "--out", str(tmp_path / "diff.md"))
    assert unchanged.exit_code == 0 and unchanged.stdout == ""
    assert "No operating point entered or left a front" in (tmp_path / "diff.md").read_text()


def test_diff_says_why_a_new_point_is_left_out_of_the_front(tmp_path):
    width = (WIDTH, {"width-25": 1.6, "width-50": 2.0}, {"width-25": 0.04, "width-50": 0.15})
    old = _registry(tmp_path / "old.db")
    new = _registry(tmp_path / "new.db", width, paired=False)  # no dense samples, 5 % p80/p20 spread: too noisy
    text = run("diff", old, new).stdout
    assert "2 groups changed" in text and "| entered |" not in text  # decode and prefill
    assert "Left out of the front, speedup too noisy to rank" in text
    name = r"Width \[x\](https://example.org) @​someone \|"
    assert f"- {name} · width-25: p80/p20 spread 5.1% above 3%, and no dense samples to bound the speedup" in text
    assert f"- {name} · width-50: p80/p20 spread" in text
    assert "No operating point entered or left a front" in run("diff", new, new).stdout


def test_diff_of_reported_quality_and_of_a_group_that_appears(tmp_path):
    old = _registry(tmp_path / "old.db")
    engine = connect(str(tmp_path / "new.db"))
    sub = make_submission("claimed-test", claims=[claim("drop-25", 6.0), claim("drop-50", 20.0)])
    ingest(engine, sub, make_result(sub, losses={}, model="llama-2-7b", weights="random"))
    engine.dispose()
    text = run("diff", old, str(tmp_path / "new.db")).stdout
    assert "### reported quality · llama-2-7b · NVIDIA H200 · bfloat16 · eager · decode-b1-c256 · wikitext2 · " in text
    assert "(new group)" in text and "| entered | Claimed Test | drop-25 (arXiv 9999.00002v3, Table 4) |" in text
