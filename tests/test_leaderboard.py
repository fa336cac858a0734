"""Leaderboard: the site is built from the registry, is valid HTML5, plots the front, escapes submissions."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from factories import make_result, make_submission
from pages import SCRIPT_TAG, check_html5, check_html5_strict

from prunereg.leaderboard.build import build_site
from prunereg.leaderboard.plot import (
    BOTTOM,
    HEIGHT,
    LEFT,
    RIGHT,
    TOP,
    WIDTH,
    PlotPoint,
    RealizationPoint,
    nice_ticks,
    pareto_svg,
    realization_svg,
)
from prunereg.registry.ingest import ingest

XSS_SCRIPT = "<script>alert(1)</script>"
XSS_ATTR = '"><img src=x onerror=alert(1)>'


@pytest.fixture
def registry(engine):
    depth = make_submission("shortgpt-test")
    depth_result = make_result(
        depth, speedups={"drop-25": 1.3, "drop-50": 1.9}, losses={"drop-25": 0.03, "drop-50": 0.20}
    )
    ingest(engine, depth, depth_result)
    width = make_submission("flap-test", adapter="width", name="FLAP test", claims=[])
    width_result = make_result(
        width, speedups={"width-25": 1.1, "width-50": 1.5}, losses={"width-25": 0.05, "width-50": 0.12}
    )
    ingest(engine, width, width_result)
    untested = make_submission("latency-only", adapter="width", claims=[])
    ingest(engine, untested, make_result(untested, losses={}))
    return engine


@pytest.fixture
def site(registry, tmp_path) -> Path:
    index = build_site(registry, tmp_path / "site")
    assert index == tmp_path / "site" / "index.html"
    return index.parent


def test_site_files_exist(site):
    for name in ("index.html", "methods/shortgpt-test.html", "methods/flap-test.html", "methods/latency-only.html",
                 "data/leaderboard.json", "static/style.css"):  # fmt: skip
        assert (site / name).is_file(), name


def test_every_page_is_valid_html5(site):
    pages = sorted(site.rglob("*.html"))
    assert len(pages) == 4
    for page in pages:
        check_html5(page)


def test_index_plots_one_circle_per_point_with_quality(site):
    html = (site / "index.html").read_text()
    svgs = re.findall(r'<svg[^>]*class="pareto".*?</svg>', html, re.S)
    assert len(svgs) == 2  # prefill and decode scenarios
    for svg in svgs:
        assert svg.count("<circle") == 4  # the latency-only method's two points are not plotted
        assert len(re.findall(r'<path class="frontier" d="M[^"]*H[^"]*V', svg)) == 1
        assert "FLAP test · width-50" in svg
    assert "2 rows have no measured quality" in html
    assert html.count('href="methods/latency-only.html"') >= 3  # methods list + two table rows


def test_realization_chart_has_one_circle_per_latency_row_and_the_diagonal(site):
    html = (site / "index.html").read_text()
    charts = re.findall(r'<svg[^>]*class="realization".*?</svg>', html, re.S)
    assert len(charts) == 2  # one per group
    for chart in charts:
        assert chart.count("<circle") == 6  # every row with a latency, the latency-only method's too
        diagonal = re.search(r'<line class="diagonal" x1="(\S+)" y1="(\S+)" x2="(\S+)" y2="(\S+)"', chart)
        x1, y1, x2, y2 = map(float, diagonal.groups())
        # both axes share one tick range, so y = x runs from corner to corner of the inset frame
        assert (x1, y1, x2, y2) == (LEFT + 10, HEIGHT - BOTTOM - 10, WIDTH - RIGHT - 10, TOP + 10)
        assert "Latency Only · width-50: 1.60× measured, 2.00× theoretical (80 % realized)" in chart


def test_latency_only_groups_get_a_realization_chart(engine, tmp_path):
    """Random-weight runs measure no quality: no Pareto plot, but the realization chart is there."""
    sub = make_submission("random-only", claims=[])
    ingest(engine, sub, make_result(sub, losses={}, model="llama-3.1-8b", weights="random"))
    html = build_site(engine, tmp_path / "site").read_text()
    assert 'class="pareto"' not in html
    charts = re.findall(r'<svg[^>]*class="realization".*?</svg>', html, re.S)
    assert len(charts) == 2 and all(c.count("<circle") == 2 for c in charts)
    assert 'class="bands' not in html


def test_scenario_selector_and_every_group_without_script(site):
    html = (site / "index.html").read_text()
    page = check_html5(site / "index.html")
    selects = [attrs["name"] for tag, attrs in page.tags if tag == "select"]
    assert selects == ["phase", "batch", "device", "mode"]
    options = re.findall(r'<option value="([^"]*)">', html)
    assert {"", "prefill", "decode", "1", "NVIDIA H200", "eager"} <= set(options)
    sections = [attrs for tag, attrs in page.tags if tag == "section" and "group" in (attrs.get("class") or "")]
    assert len(sections) == 2
    assert all(not s.get("hidden") and "hidden" not in s for s in sections)  # the script hides, not the HTML
    assert {s["data-phase"] for s in sections} == {"prefill", "decode"}
    assert {(s["data-batch"], s["data-device"], s["data-mode"]) for s in sections} == {("1", "NVIDIA H200", "eager")}
    assert re.search(r'<form id="scenario"[^>]* hidden>', html)  # shown by the script only
    assert 'id="results"' in html and "Results: all 2 groups" in html
    assert html.count('class="rows sortable"') == 2
    assert (site / "static" / "leaderboard.js").is_file()
    script = (site / "static" / "leaderboard.js").read_text()
    assert "http" not in script and "fetch(" not in script and "XMLHttpRequest" not in script


def test_band_table_present_when_bands_exist(site):
    html = (site / "index.html").read_text()
    tables = re.findall(r'<table class="bands sortable">.*?</table>', html, re.S)
    assert len(tables) == 2
    for table in tables:
        assert "Transition bands" in table
        assert "static M, depth" in table and "Shortgpt Test · drop-25" in table


def test_json_rows_carry_the_known_front(site):
    data = json.loads((site / "data" / "leaderboard.json").read_text())
    assert data["speedup"] == "measured"
    prefill = [r for r in data["rows"] if r["phase"] == "prefill"]
    front = {r["operating_point"] for r in prefill if r["pareto"]}
    assert front == {"drop-25", "drop-50", "width-50"}
    ranks = {(r["method_slug"], r["operating_point"]): r["dominated_by"] for r in prefill}
    assert ranks[("flap-test", "width-25")] == 1 and ranks[("latency-only", "width-25")] is None
    assert [r["quality_loss"] for r in prefill if r["method_slug"] == "latency-only"] == [None, None]
    keys = [(r["model"], r["phase"] != "prefill", r["method_slug"], r["operating_point"]) for r in data["rows"]]
    assert keys == sorted(keys)


def test_method_page_lists_effects_points_claims_and_runs(site):
    html = (site / "methods" / "shortgpt-test.html").read_text()
    for gemm in ("qkv_proj", "o_proj", "gate_up_proj", "down_proj", "attn_score", "attn_value"):
        assert f"<code>{gemm}</code>" in html
    assert "M (tokens)" in html and "parameter <code>sparsity</code>" in html
    assert "<code>sparsity=0.25</code>" in html
    assert 'href="https://arxiv.org/abs/9999.00001v1"' in html and "Table 3" in html
    assert "prefill-b1-s256" in html and "NVIDIA H200" in html
    assert "&#34;schema_version&#34;: 1" in html or "&quot;schema_version&quot;: 1" in html


def test_submission_text_is_escaped_everywhere(engine, tmp_path):
    """Names refuse markup at validation (tests/test_spec.py); free text may hold it and is escaped."""
    evil = make_submission(
        "evil-method",
        name="Evil & method",
        description=f"{XSS_ATTR} and {XSS_SCRIPT}",
        points={"drop-25": {"sparsity": 0.25, "seed": 0}},
    )
    ingest(engine, evil, make_result(evil))
    site = build_site(engine, tmp_path / "site").parent
    files = [p for p in site.rglob("*") if p.is_file()]
    assert len(files) >= 4
    for path in files:
        text = SCRIPT_TAG.sub("", path.read_text(encoding="utf-8")).lower()
        assert "<script" not in text, path
        assert not re.search(r"<img[^>]*onerror", text), path
        if path.suffix == ".html":
            check_html5(path)
    page = (site / "methods" / "evil-method.html").read_text()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page
    rows = json.loads((site / "data" / "leaderboard.json").read_text())["rows"]
    assert rows[0]["method_name"] == "Evil & method"  # escaped in the file, intact as data


def test_plot_escapes_labels_and_draws_the_step_front():
    points = [
        PlotPoint(0.0, 1.0, "dense", "a<b"),
        PlotPoint(0.1, 2.0, "static_depth", "x"),
        PlotPoint(0.2, 1.5, "static_width", "y"),
    ]
    svg = str(pareto_svg(points, 'title "<quoted>"'))
    assert "a&lt;b" in svg and "<quoted>" not in svg
    assert svg.count("<circle") == 3
    assert re.search(r'class="frontier" d="M\S+ \S+ H\S+ V\S+"', svg)  # two front points, one step
    assert "static M, depth" in svg and "static NK, width" in svg


def test_realization_svg_escapes_and_draws_the_diagonal():
    points = [RealizationPoint(2.0, 1.5, "static_width", 'w<"x">'), RealizationPoint(1.3, 1.35, "static_depth", "d")]
    svg = str(realization_svg(points, "t<i>"))
    assert "<i>" not in svg and 'w<"x">' not in svg and "w&lt;&#34;x&#34;&gt;" in svg
    assert svg.count("<circle") == 2 and svg.count('class="diagonal"') == 1
    assert "75 % realized" in svg


def test_html5_strict_check_catches_misnesting(tmp_path):
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>x</title></head>'
                   "<body><p><b>x</p></b></body></html>")  # fmt: skip
    with pytest.raises(AssertionError):
        check_html5_strict(bad.read_text(), bad)


def test_empty_registry_builds_a_valid_site(engine, tmp_path):
    site = build_site(engine, tmp_path / "site").parent
    check_html5(site / "index.html")
    assert "<svg" not in (site / "index.html").read_text()
    assert json.loads((site / "data" / "leaderboard.json").read_text())["rows"] == []


@pytest.mark.parametrize(
    ("lo", "hi", "expected"),
    [
        (0.0, 1.0, [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]),
        (0.9, 2.1, [0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.25]),
        (-3.0, 22.0, [-5.0, 0.0, 5.0, 10.0, 15.0, 20.0, 25.0]),
    ],
)
def test_nice_ticks_cover_the_range(lo, hi, expected):
    assert nice_ticks(lo, hi) == expected


def test_noisy_medians_are_flagged_not_hidden(engine, tmp_path):
    """The factories' p80/p20 spread is 1.03/0.98 − 1 ≈ 5 %, above the 3 % threshold."""
    from dataclasses import replace

    from prunereg.leaderboard.display import NOISY_SPREAD, noisy
    from prunereg.registry.queries import leaderboard_rows

    submission = make_submission()
    ingest(engine, submission, make_result(submission))
    rows = leaderboard_rows(engine)
    assert rows and all(noisy(r) and r.spread > NOISY_SPREAD for r in rows)
    html = (build_site(engine, tmp_path / "site")).read_text()
    assert html.count('class="note noisy"') == len(rows)
    assert not noisy(replace(rows[0], p80_ms=rows[0].p20_ms * 1.02))


def test_method_page_shows_a_submitted_checkpoint_and_its_weights_sha256(engine, tmp_path):
    from factories import default_effects

    from prunereg.registry.export import latency_records
    from prunereg.spec.results import CheckpointRecord, WeightFile

    declared = {"path": "checkpoints/drop-25", "base": "prunereg-mini", "sparsity": 0.25}
    sub = make_submission(
        "checkpoint-test", adapter="checkpoint", family="static_depth", points={"drop-25": declared},
        effects=default_effects("layer_drop"), claims=[],
    )  # fmt: skip
    digests = ["0123456789ab" + "c" * 52, "fedcba987654" + "d" * 52]
    files = [
        WeightFile(name=f"model-0000{i}-of-00002.safetensors", size=2_000_000, sha256=d)
        for i, d in enumerate(digests, 1)
    ]
    record = CheckpointRecord(path=declared["path"], base=declared["base"], files=files)
    result = make_result(sub)
    ingest(
        engine,
        sub,
        result.model_copy(update={"points": [p.model_copy(update={"checkpoint": record}) for p in result.points]}),
    )
    depth = make_submission("shortgpt-test")
    ingest(engine, depth, make_result(depth))
    site = build_site(engine, tmp_path / "site").parent
    page = (site / "methods" / "checkpoint-test.html").read_text()
    check_html5(site / "methods" / "checkpoint-test.html")
    assert "<code>checkpoints/drop-25</code> pruned from prunereg-mini" in page
    for i, digest in enumerate(digests, 1):
        assert f"<code>model-0000{i}-of-00002.safetensors</code> (2,000,000 bytes)" in page
        assert f'<code class="sha256" title="{digest}">{digest[:12]}…</code>' in page
    assert 'class="checkpoint"' not in (site / "methods" / "shortgpt-test.html").read_text()
    exported = {r["method_slug"]: r["checkpoint_sha256"] for r in latency_records(engine)}
    assert exported == {"checkpoint-test": ",".join(digests), "shortgpt-test": None}


def test_method_page_marks_the_current_and_the_superseded_versions_current_first(engine, tmp_db, tmp_path):
    """Results of a superseded version ingested after the current one's: newest first would put it on top."""
    from typer.testing import CliRunner

    from prunereg.cli import app

    current = make_submission("shortgpt-test", description="Removes the layers its paper's criterion ranks lowest.")
    superseded = make_submission("shortgpt-test")
    unknown = make_submission("shortgpt-test", description="A version kept nowhere in the submissions folder.")
    for sub in (unknown, current, superseded):
        ingest(engine, sub, make_result(sub))
    folder = tmp_path / "submissions"
    (folder / "superseded" / "shortgpt-test").mkdir(parents=True)
    (folder / "shortgpt-test.json").write_text(current.model_dump_json(exclude_defaults=True))
    copy = folder / "superseded" / "shortgpt-test" / f"{superseded.spec_hash()[:12]}.json"
    copy.write_text(superseded.model_dump_json(exclude_defaults=True))

    unmarked = build_site(engine, tmp_path / "unmarked").parent
    result = CliRunner().invoke(
        app, ["leaderboard", "build", "--out", str(tmp_path / "site"), "--db", tmp_db, "--submissions", str(folder)]
    )
    assert result.exit_code == 0, result.output
    site = tmp_path / "site"
    check_html5(site / "methods" / "shortgpt-test.html")
    page = (site / "methods" / "shortgpt-test.html").read_text()
    headings = re.findall(r'<section id="submission-(\w+)" class="submission ?(\w*)">\s*<h2>([^<]+)<code', page)
    assert headings == [
        (current.spec_hash(), "current", "Current submission "),
        (superseded.spec_hash(), "superseded", "Superseded submission "),
        (unknown.spec_hash(), "", "Submission "),
    ]
    assert f'Superseded by <a href="#submission-{current.spec_hash()}">' in page
    old = (unmarked / "methods" / "shortgpt-test.html").read_text()
    assert "Current submission" not in old
    assert old.index(superseded.spec_hash()) < old.index(current.spec_hash()) < old.index(unknown.spec_hash())
    for name in ("index.html", "data/leaderboard.json"):
        assert (site / name).read_text() == (unmarked / name).read_text(), name

    copy.unlink()
    copy.symlink_to(tmp_path / "elsewhere.json")
    (tmp_path / "elsewhere.json").write_text(superseded.model_dump_json(exclude_defaults=True))
    relinked = build_site(engine, tmp_path / "relinked", submissions=folder).parent
    assert "Superseded submission" not in (relinked / "methods" / "shortgpt-test.html").read_text()
