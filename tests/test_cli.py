"""Command-line hygiene: full tables in pipes, --version, empty and unusable registries in one line,
--point checks only the named points, and --out folders that are replaced whole and never clobber."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from factories import make_environment, make_result, make_submission

from prunereg import __version__
from prunereg.leaderboard.build import build_site
from prunereg.outputs import SITE_MARKER, OutputRefused, replaced_folder
from prunereg.registry.db import connect
from prunereg.registry.ingest import ingest

ROOT = Path(__file__).resolve().parents[1]
LONG_NAME = "An Unusually Long Method Name That Would Not Fit In Eighty Columns"
LONG_POINT = "a-very-long-operating-point-name-25"


def prunereg(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The command line as a user runs it, stdout and stderr going to pipes; COLUMNS must not matter."""
    env = {k: v for k, v in os.environ.items() if k != "PRUNEREG_DB"} | {"COLUMNS": "40"}
    return subprocess.run(
        [sys.executable, "-m", "prunereg.cli", *args], capture_output=True, text=True, env=env, cwd=cwd
    )  # fmt: skip


def one_error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: "), line
    return line


@pytest.fixture
def long_names(tmp_path) -> Path:
    """A registry whose method and point names are longer than a default 80-column table allows."""
    path = tmp_path / "long.db"
    engine = connect(str(path))
    sub = make_submission("long-names", name=LONG_NAME, points={LONG_POINT: {"sparsity": 0.25, "seed": 0}})
    ingest(engine, sub, make_result(sub, environment=make_environment(device_name="NVIDIA H200 SXM 141GB HBM3e")))
    engine.dispose()
    return path


def test_tables_print_in_full_into_a_pipe(long_names, tmp_path):
    frontier = prunereg("frontier", "--phase", "prefill", "--batch", "1", "--all", "--db", str(long_names))
    assert frontier.returncode == 0, frontier.stderr
    folder = tmp_path / "submissions"
    folder.mkdir()
    (folder / "long-names.json").write_text(make_submission("long-names", name=LONG_NAME).model_dump_json())
    listing = prunereg("list", "submissions", "--folder", str(folder))
    assert listing.returncode == 0, listing.stderr
    for out in (frontier.stdout, listing.stdout):
        assert "…" not in out
        assert LONG_NAME in out
    assert LONG_POINT in frontier.stdout and "NVIDIA H200 SXM 141GB HBM3e" in frontier.stdout
    assert str(folder / "long-names.json") in listing.stdout
    assert max(len(line) for line in frontier.stdout.splitlines()) < 400  # nothing padded to the piped width


def test_version():
    result = prunereg("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"prunereg {__version__}"


def test_an_empty_registry_is_named_and_said_to_be_empty(tmp_path):
    db = tmp_path / "fresh.db"
    frontier = one_error_line(prunereg("frontier", "--phase", "prefill", "--batch", "1", "--db", str(db)))
    assert str(db) in frontier and "is empty" in frontier
    export = prunereg("export", "--db", str(db))
    assert export.returncode == 0 and export.stdout.startswith("method_slug,") and export.stdout.count("\n") == 1
    assert str(db) in export.stderr and "is empty" in export.stderr
    exported = prunereg("export", "--format", "json", "--db", str(db))
    assert (
        json.loads(exported.stdout) == {"latency": [], "quality": [], "reported": []} and "is empty" in exported.stderr
    )
    site = prunereg("leaderboard", "build", "--out", str(tmp_path / "site"), "--db", str(db))
    assert site.returncode == 0, site.stderr
    assert str(db) in site.stderr and "is empty" in site.stderr
    assert (tmp_path / "site" / "index.html").is_file()


def test_a_matching_miss_names_the_registry(long_names):
    line = one_error_line(prunereg("frontier", "--phase", "decode", "--batch", "32", "--db", str(long_names)))
    assert "no latency rows for decode at batch 32" in line and str(long_names) in line


def bad_urls(tmp_path: Path) -> dict[str, tuple[str, str]]:
    """--db value and a part of the one-line error it must give."""
    empty = tmp_path / "empty.db"
    empty.touch()
    text = tmp_path / "notes.txt"
    text.write_text("not a database, " * 512)
    return {
        "no such dialect": ("nonsense://x", "is not a SQLite file or a database URL"),
        "no server": ("postgresql+psycopg://nobody@127.0.0.1:1/x", "Connection refused"),
        "missing folder": (str(tmp_path / "missing" / "r.db"), "unable to open database file"),
        "read-only": (f"sqlite:///file:{empty}?mode=ro&uri=true", "readonly database"),
        "not a database": (str(text), "file is not a database"),
    }


FRONTIER = ("frontier", "--phase", "prefill", "--batch", "1")


@pytest.mark.parametrize(
    ("case", "command"),
    [(case, ("export",)) for case in ("no such dialect", "no server", "missing folder", "read-only", "not a database")]
    + [("no server", FRONTIER), ("missing folder", ("db", "upgrade"))],
)
def test_an_unusable_registry_is_one_line(case, command, tmp_path):
    db, reason = bad_urls(tmp_path)[case]
    line = one_error_line(prunereg(*command, "--db", db))
    assert reason in line, line


def test_the_leaderboard_and_ingest_refuse_an_unusable_registry_in_one_line(tmp_path):
    db = str(tmp_path / "missing" / "r.db")
    assert "unable to open" in one_error_line(
        prunereg("leaderboard", "build", "--out", str(tmp_path / "s"), "--db", db)
    )
    assert not (tmp_path / "s").exists()
    saved = sorted((ROOT / "results").rglob("*--*.json"))[:1]  # saved evaluations, not ceilings or profiles
    assert saved, "the repository's saved evaluations are the ingest input here"
    assert "unable to open" in one_error_line(prunereg("ingest", str(saved[0]), "--db", db))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through file permissions")
def test_a_read_only_file_and_folder_are_one_line(tmp_path):
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        one_error_line(prunereg("export", "--db", str(folder / "r.db")))
    finally:
        folder.chmod(0o755)


# --out: the site and checkpoints


@pytest.fixture
def registry(engine):
    sub = make_submission()
    ingest(engine, sub, make_result(sub))
    return engine


def test_a_rebuild_replaces_the_site_without_stale_pages(registry, tmp_path):
    site = tmp_path / "site"
    build_site(registry, site)
    assert (site / SITE_MARKER).is_file()
    (site / "methods" / "removed-method.html").write_text("stale")
    build_site(registry, site)
    assert not (site / "methods" / "removed-method.html").exists()
    assert (site / "methods" / "shortgpt-test.html").is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary sibling left


def test_a_folder_prunereg_did_not_write_is_refused_unless_forced(registry, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(OutputRefused, match="did not write.*--force"):
        build_site(registry, mine)
    assert (mine / "notes.txt").read_text() == "keep me" and not (mine / "index.html").exists()
    build_site(registry, mine, force=True)
    assert (mine / "index.html").is_file() and not (mine / "notes.txt").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    build_site(registry, empty)  # an empty folder holds nothing to lose
    assert (empty / "index.html").is_file()


def test_a_file_and_a_link_are_refused(registry, tmp_path):
    file = tmp_path / "site.html"
    file.write_text("a file")
    with pytest.raises(OutputRefused, match="is a file"):
        build_site(registry, file)
    assert file.read_text() == "a file"
    target = tmp_path / "elsewhere"
    build_site(registry, target)
    link = tmp_path / "link"
    link.symlink_to(target, target_is_directory=True)
    with pytest.raises(OutputRefused, match="symbolic link"):
        build_site(registry, link, force=True)
    assert link.is_symlink()


def test_a_crash_while_writing_leaves_the_earlier_site_whole(registry, tmp_path):
    site = tmp_path / "site"
    build_site(registry, site)
    before = {p.relative_to(site): p.read_bytes() for p in site.rglob("*") if p.is_file()}
    with pytest.raises(RuntimeError), replaced_folder(site, SITE_MARKER) as fresh:
        (fresh / "index.html").write_text("half")
        raise RuntimeError("killed")
    assert {p.relative_to(site): p.read_bytes() for p in site.rglob("*") if p.is_file()} == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_the_cli_refuses_foreign_folders_and_files_in_one_line(registry, tmp_db, tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("x")
    line = one_error_line(prunereg("leaderboard", "build", "--out", str(foreign), "--db", tmp_db))
    assert "--force" in line and (foreign / "thesis.tex").exists()
    assert prunereg("leaderboard", "build", "--out", str(foreign), "--force", "--db", tmp_db).returncode == 0
    submission = str(ROOT / "submissions" / "shortgpt.json")
    (tmp_path / "file").write_text("x")
    assert "is a file" in one_error_line(
        prunereg("prune", submission, "--point", "drop-25", "--out", str(tmp_path / "file"))
    )
    (tmp_path / "link").symlink_to(foreign)
    line = one_error_line(
        prunereg("prune", submission, "--point", "drop-25", "--out", str(tmp_path / "link"), "--force")
    )
    assert "symbolic link" in line


# --point: only the named points are checked against the model


@pytest.mark.slow
def test_point_checks_only_the_named_points_and_prune_replaces_its_checkpoint(tmp_path):
    """A 4-layer checkpoint (ShortGPT's drop-50 of the 8-layer embedded model) fits dropping a quarter of
    its layers but not three quarters, which would leave fewer than the first and the last."""
    import torch

    from prunereg.adapters import get_adapter
    from prunereg.evaluate import apply_point, evaluate, load_checked
    from prunereg.harness.checkpoint import save_pruned
    from prunereg.spec.catalog import EMBEDDED_MODEL, Phase, Scenario
    from prunereg.spec.validate import validate_file

    document = json.loads((ROOT / "submissions" / "shortgpt.json").read_text()) | {"quality_claims": []}
    document["adapter"]["operating_points"][1:] = [
        {"name": "drop-75", "params": {"sparsity": 0.75, "selection": "deepest"}}
    ]
    submission = tmp_path / "shortgpt.json"
    submission.write_text(json.dumps(document))
    spec, problems = validate_file(submission)
    assert spec is not None and not problems  # drop-75 fits the 8-layer embedded model
    original, _ = validate_file(ROOT / "submissions" / "shortgpt.json")
    loaded = load_checked(original, EMBEDDED_MODEL, "cpu", torch.float32, [original.point("drop-50")])
    half, _ = apply_point(original, loaded, original.point("drop-50"))
    four = tmp_path / "four-layers"
    save_pruned(get_adapter("layer_drop"), half, loaded.tokenizer, four)

    db = str(tmp_path / "r.db")
    assert "'drop-75' does not fit four-layers" in one_error_line(
        prunereg("evaluate", str(submission), "--model", str(four), "--db", db)
    )
    tiny = (Scenario(phase=Phase.prefill, batch_size=1, seq_len=32),)
    result = evaluate(spec, str(four), "cpu", tiny, warmup=0, repeats=3, only={"drop-25"})
    assert [p.operating_point for p in result.points] == ["drop-25"]

    out = tmp_path / "pruned"
    made = prunereg("prune", str(submission), "--model", str(four), "--point", "drop-25", "--out", str(out))
    assert made.returncode == 0, made.stderr
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 3
    (out / "model-00002-of-00002.safetensors").write_text("a shard of an earlier, larger model")
    save_pruned(get_adapter("layer_drop"), half, loaded.tokenizer, out)  # what a second `prune --out` runs
    assert not (out / "model-00002-of-00002.safetensors").exists() and (out / ".prunereg-checkpoint").is_file()
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 4


def test_evaluate_names_an_unknown_suite_or_quality_task_in_one_line(tmp_path):
    """Refused before any model is loaded or the registry is touched."""
    db = tmp_path / "untouched.db"
    task = one_error_line(prunereg("evaluate", str(ROOT / "submissions/dense.json"), "--task", "mmlu", "--db", str(db)))
    assert "unknown quality task 'mmlu'" in task and "austen-cloze" in task
    suite = one_error_line(
        prunereg("evaluate", str(ROOT / "submissions/dense.json"), "--scenarios", "x", "--db", str(db))
    )
    assert "unknown scenario suite 'x'" in suite
    assert not db.exists()


def test_register_stores_submissions_with_their_claims_all_or_nothing(tmp_path):
    db = tmp_path / "registry.db"
    files = [str(ROOT / "submissions" / f"{slug}.json") for slug in ("slicegpt", "sleb")]
    first = prunereg("register", *files, "--db", str(db))
    assert first.returncode == 0, first.stderr
    assert "slicegpt" in first.stdout and "quality_results" in first.stdout
    again = prunereg("register", *files, "--db", str(db))
    assert again.returncode == 0 and again.stdout.count("added nothing") == 2
    bad = tmp_path / "bad.json"
    bad.write_text((ROOT / "submissions" / "wanda.json").read_text().replace('"2306.11695v2"', '"2306.11695"'))
    refused = prunereg("register", str(ROOT / "submissions" / "wanda.json"), str(bad), "--db", str(db))
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert f"{bad}: /quality_claims/0/provenance/arxiv:" in refused.stderr
    exported = prunereg("export", "--format", "json", "--table", "quality", "--db", str(db))
    slugs = {q["method_slug"] for q in json.loads(exported.stdout)["quality"]}
    assert slugs == {"slicegpt", "sleb"}  # nothing of wanda.json
