"""Leaderboard: the site is built from the registry, is valid HTML5, plots the front, escapes submissions."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest
from factories import RECOVERED, claim, ingest_measured_and_reported, make_result, make_submission, row
from pages import SCRIPT_TAG, check_html5, check_html5_strict

from prunereg.leaderboard.build import build_site
from prunereg.leaderboard.plot import (
    BOTTOM,
    CHAR_WIDTH,
    HEIGHT,
    LEFT,
    RIGHT,
    SHAPES,
    TOP,
    WIDTH,
    PlotPoint,
    RealizationPoint,
    marker_shapes,
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
    for name in ("index.html", "measured.html", "reported.html", "methods/shortgpt-test.html",
                 "methods/flap-test.html", "methods/latency-only.html", "data/leaderboard.json", "data/reported.json",
                 "static/style.css"):  # fmt: skip
        assert (site / name).is_file(), name


def test_every_page_is_valid_html5(site):
    pages = sorted(site.rglob("*.html"))
    assert len(pages) == 9  # three views, the methods list, three method pages, a page per group (prefill, decode)
    assert len(list((site / "groups").glob("*.html"))) == 2
    for page in pages:
        check_html5(page)


def test_measured_page_plots_one_marker_per_point_with_quality(site):
    html = (site / "measured.html").read_text()
    svgs = re.findall(r'<svg[^>]*class="pareto".*?</svg>', html, re.S)
    assert len(svgs) == 2  # prefill and decode scenarios
    for svg in svgs:
        assert svg.count('<g class="point"') == 4  # one per point; not the latency-only method's
        assert re.findall(r'<g class="legend-method" data-method="([^"]*)"', svg) == ["shortgpt-test", "flap-test"]
        assert len(re.findall(r'<path class="frontier" d="M[^"]*H[^"]*V', svg)) == 1
        assert "FLAP test · width-50" in svg
    assert "2 rows have no measured quality" in html
    assert html.count('href="methods/latency-only.html"') >= 3  # methods list + two table rows


def test_realization_chart_has_one_marker_per_latency_row_and_the_diagonal(site):
    html = (site / "measured.html").read_text()
    charts = re.findall(r'<svg[^>]*class="realization".*?</svg>', html, re.S)
    assert len(charts) == 2  # one per group
    for chart in charts:
        assert chart.count('<g class="point"') == 6  # every row with a latency, the latency-only method's too
        diagonal = re.search(r'<line class="diagonal" x1="(\S+)" y1="(\S+)" x2="(\S+)" y2="(\S+)"', chart)
        x1, y1, x2, y2 = map(float, diagonal.groups())
        # both axes share one tick range, so y = x runs from corner to corner of the inset frame
        assert (x1, y1, x2, y2) == (LEFT + 10, HEIGHT - BOTTOM - 10, WIDTH - RIGHT - 10, TOP + 10)
        assert "Latency Only · width-50: 1.60× measured, 2.00× theoretical (80 % realized)" in chart


def test_latency_only_groups_get_a_realization_chart(engine, tmp_path):
    """Random-weight runs measure no quality: no Pareto plot, but the realization chart is there."""
    sub = make_submission("random-only", claims=[])
    ingest(engine, sub, make_result(sub, losses={}, model="llama-3.1-8b", weights="random"))
    html = (build_site(engine, tmp_path / "site").parent / "measured.html").read_text()
    assert 'class="pareto"' not in html
    charts = re.findall(r'<svg[^>]*class="realization".*?</svg>', html, re.S)
    assert len(charts) == 2 and all(c.count('<g class="point"') == 2 for c in charts)
    assert 'class="bands' not in html


def test_scenario_selector_and_every_group_without_script(site):
    html = (site / "measured.html").read_text()
    page = check_html5(site / "measured.html")
    selects = [attrs["name"] for tag, attrs in page.tags if tag == "select"]
    assert selects == ["phase", "batch", "device", "mode", "method"]  # the scenario, then the method highlighter
    options = re.findall(r'<option value="([^"]*)">', html)
    assert {"", "prefill", "decode", "1", "NVIDIA H200", "eager"} <= set(options)
    sections = [attrs for tag, attrs in page.tags if tag == "section" and "group" in (attrs.get("class") or "")]
    assert len(sections) == 2
    assert all(not s.get("hidden") and "hidden" not in s for s in sections)  # the script hides, not the HTML
    assert {s["data-phase"] for s in sections} == {"prefill", "decode"}
    assert {(s["data-batch"], s["data-device"], s["data-mode"]) for s in sections} == {("1", "NVIDIA H200", "eager")}
    assert re.search(r'<form id="scenario"[^>]* hidden>', html)  # shown by the script only
    assert re.search(r'<form id="highlight"[^>]* hidden>', html)
    highlight = re.search(r'<select name="method">(.*?)</select>', html, re.S).group(1)
    assert re.findall(r'<option value="([^"]*)">', highlight) == ["", "flap-test", "latency-only", "shortgpt-test"]
    assert 'id="results"' in html and "Results: all 2 groups" in html
    assert html.count('class="rows sortable"') == 2
    assert (site / "static" / "leaderboard.js").is_file()
    script = (site / "static" / "leaderboard.js").read_text()
    assert "http" not in script and "fetch(" not in script and "XMLHttpRequest" not in script


def test_band_table_present_when_bands_exist(site):
    html = (site / "measured.html").read_text()
    tables = re.findall(r'<table class="bands sortable" data-quality="measured">.*?</table>', html, re.S)
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
    assert svg.count('<g class="point"') == 3
    assert re.search(r'class="frontier" d="M\S+ \S+ H\S+ V\S+"', svg)  # two front points, one step
    assert "static M, depth" in svg and "static NK, width" in svg


def marker_x(svg: str) -> dict[str, float]:
    """Each point's label (its hover title, up to the colon) and the x of its marker's path."""
    found = re.findall(
        r'<g class="point"[^>]*><title>([^:<]*):[^<]*</title>\s*<path class="marker"[^>]*? d="M([\d.]+)', svg
    )
    return {label: float(x) for label, x in found}


def test_a_perplexity_blow_up_puts_the_loss_axis_on_a_log_scale():
    """ASVD at 80 % reports C4 +925336 % on LLaMA-7B: on a linear axis the points at 3-30 % would share one pixel."""
    points = [
        PlotPoint(0.03, 1.38, "static_depth", "ShortGPT"),
        PlotPoint(0.30, 1.20, "static_width", "LLM-Pruner"),
        PlotPoint(9253.36, 1.89, "static_k_low_rank", "ASVD"),
    ]
    svg = str(pareto_svg(points, "t", quality="reported"))
    assert "reported quality loss (papers' tables, %), lower is better (log scale)" in svg
    ticks = re.findall(r'text-anchor="middle">([\d.-]+)</text>', svg)
    assert ticks == ["0", "1", "10", "100", "1000", "10000", "100000", "1000000"]
    x = marker_x(svg)
    assert x["ShortGPT"] < x["LLM-Pruner"] < x["ASVD"]
    assert x["LLM-Pruner"] - x["ShortGPT"] > 50  # 3 % and 30 % a decade apart, not crushed together
    linear = marker_x(str(pareto_svg(points[:2], "t", quality="reported")))
    assert "log scale" not in str(pareto_svg(points[:2], "t")) and linear["ShortGPT"] < linear["LLM-Pruner"]


def test_front_points_are_named_on_the_plot_and_noisy_points_are_hollow():
    """Finding one's method without hovering, and telling an uncertain speedup from a firm one."""
    points = [
        PlotPoint(0.02, 1.3, "static_depth", "ShortGPT · drop-25"),
        PlotPoint(0.10, 1.2, "static_width", "LLM-Pruner · width-25", noisy=True),  # dominated
        PlotPoint(0.20, 1.9, "static_depth", "ShortGPT <drop-50>", noisy=True),
    ]
    svg = str(pareto_svg(points, "t"))
    labels = re.findall(r'<text class="front-label"[^>]*>([^<]*)</text>', svg)
    assert labels == ["ShortGPT · drop-25", "ShortGPT &lt;drop-50&gt;"]  # the front, escaped; not the dominated point
    hollow = re.findall(r'<path class="marker" [^>]*fill="#fff"[^>]*stroke-dasharray="2 2"[^>]*>', svg)
    assert len(hollow) == 3  # the two noisy points and the legend's sample
    assert "dashed: noisy measured speedup" in svg
    assert "noisy" not in str(pareto_svg(points[:1], "t"))  # no legend entry without one


def test_realization_svg_escapes_and_draws_the_diagonal():
    points = [RealizationPoint(2.0, 1.5, "static_width", 'w<"x">'), RealizationPoint(1.3, 1.35, "static_depth", "d")]
    svg = str(realization_svg(points, "t<i>"))
    assert "<i>" not in svg and 'w<"x">' not in svg and "w&lt;&#34;x&#34;&gt;" in svg
    assert svg.count('<g class="point"') == 2 and svg.count('class="diagonal"') == 1
    assert "75 % realized" in svg


def markers(svg: str) -> list[dict[str, str]]:
    """Each plotted point's method, family, tooltip, marker shape, fill and colour, and its error bar's path (or "")."""

    def first(pattern: str, text: str) -> tuple[str, ...]:
        match = re.search(pattern, text)
        assert match, (pattern, text)
        return match.groups()

    found = []
    for attrs, body in re.findall(r'<g class="point" ([^>]*)>(.*?)</g>', svg, re.S):
        shape, fill = first(
            r'<path class="marker" data-shape="([^"]*)" d="[^"]*" (?:stroke="[^"]*" )?fill="([^"]*)"', body
        )
        bar = re.search(r'<path class="error-bar" d="([^"]*)"', body)
        found.append({
            **dict(re.findall(r'data-(\w+)="([^"]*)"', attrs)),
            "title": first(r"<title>([^<]*)</title>", body)[0], "shape": shape, "fill": fill,
            "bar": bar.group(1) if bar else "",
            "colour": first(r'(?:fill|stroke)="(#[0-9A-Fa-f]{6})"', body.split('class="marker"')[1])[0],
        })  # fmt: skip
    return found


def test_methods_of_one_family_share_its_colour_with_a_shape_each_and_the_legend_names_them():
    points = [
        PlotPoint(0.02, 1.3, "static_depth", "ShortGPT · drop-25", method_slug="shortgpt", method_name="ShortGPT"),
        PlotPoint(0.05, 1.4, "static_depth", "SLEB · drop-25", method_slug="sleb", method_name="SLEB"),
        PlotPoint(0.08, 1.45, "static_depth", "LaCo · drop-25", method_slug="laco", method_name="LaCo"),
        PlotPoint(0.10, 1.2, "static_width", "FLAP · width-25", method_slug="flap", method_name="FLAP"),
        PlotPoint(0.20, 1.6, "static_depth", "SLEB · drop-50", method_slug="sleb", method_name="SLEB"),
    ]
    svg = str(pareto_svg(points, "t"))
    by_method: dict[str, set[tuple[str, str]]] = {}
    for m in markers(svg):
        by_method.setdefault(m["method"], set()).add((m["shape"], m["colour"]))
    assert all(len(v) == 1 for v in by_method.values())  # one look per method, on every one of its points
    look = {method: next(iter(v)) for method, v in by_method.items()}
    assert look == {  # slug order within the family; the next family starts over
        "laco": ("circle", "#0072B2"), "shortgpt": ("square", "#0072B2"), "sleb": ("triangle", "#0072B2"),
        "flap": ("circle", "#009E73"),
    }  # fmt: skip
    legend = re.findall(r'<g class="legend-(family|method)" data-(?:family|method)="([^"]*)"', svg)
    assert legend == [
        ("family", "static_depth"), ("method", "laco"), ("method", "shortgpt"), ("method", "sleb"),
        ("family", "static_width"), ("method", "flap"),
    ]  # fmt: skip
    for name in ("LaCo", "ShortGPT", "SLEB", "FLAP"):
        assert f">{name}</text>" in svg
    assert marker_shapes(("static_depth", f"m{i:02}") for i in range(10))["m08"] == SHAPES[0]  # the ninth cycles


def test_a_method_keeps_its_shape_on_every_plot_given_the_sites_shapes():
    """Alone on a plot SLEB would be the family's circle; the site's shapes keep it the triangle it is elsewhere."""
    site = marker_shapes([("static_depth", "laco"), ("static_depth", "shortgpt"), ("static_depth", "sleb")])
    alone = [PlotPoint(0.05, 1.4, "static_depth", "SLEB · drop-25", method_slug="sleb")]
    assert [m["shape"] for m in markers(str(pareto_svg(alone, "t")))] == ["circle"]
    assert [m["shape"] for m in markers(str(pareto_svg(alone, "t", shapes=site)))] == ["triangle"]
    chart = str(
        realization_svg([RealizationPoint(1.5, 1.4, "static_depth", "SLEB · drop-25", "sleb")], "t", shapes=site)
    )
    assert 'data-shape="triangle"' in chart and 'data-shape="circle"' not in chart


def test_error_bars_span_the_interval_and_only_where_there_is_one():
    points = [
        PlotPoint(0.02, 1.3, "static_depth", "a · p", low=1.2, high=1.45),
        PlotPoint(0.10, 1.5, "static_width", "b · p"),
    ]
    svg = str(pareto_svg(points, "t"))
    a, b = sorted(markers(svg), key=lambda m: m["method"])
    assert b["bar"] == "" and "interval" not in b["title"]
    assert "interval 1.20–1.45×" in a["title"]
    ticks = {float(t): float(y) for y, t in re.findall(r'<text [^>]*y="(\S+)" text-anchor="end">([\d.]+)×</text>', svg)}
    scale = (ticks[1.0] - ticks[1.5]) / 0.5  # pixels per 1× of speedup (tick texts sit 4 below their lines)
    x, lo, hi = re.match(r"M(\S+) (\S+) V(\S+) ", a["bar"]).groups()
    assert float(lo) + 4 == pytest.approx(ticks[1.0] - 0.2 * scale, abs=0.05)
    assert float(hi) + 4 == pytest.approx(ticks[1.0] - 0.45 * scale, abs=0.05)
    assert max(ticks) >= 1.45  # the axis reaches the top of the interval
    assert "speedup interval" in svg and "speedup interval" not in str(pareto_svg(points[1:], "t"))


def test_an_excluded_point_is_hollow_off_the_front_and_says_why():
    reason = "speedup interval 1.10–2.60× wider than 15 %"
    points = [
        PlotPoint(0.02, 1.3, "static_depth", "ShortGPT · drop-25"),
        PlotPoint(0.05, 2.2, "static_width", "FLAP · width-20", noisy=True, excluded=reason),  # would lead the front
        PlotPoint(0.10, 1.5, "static_width", "FLAP · width-50"),
    ]
    svg = str(pareto_svg(points, "t"))
    excluded = [m for m in markers(svg) if "excluded" in m]
    assert len(excluded) == 1 and excluded[0]["excluded"] == reason
    assert excluded[0]["fill"] == "#fff" and excluded[0]["title"].endswith(f"; left out of the front: {reason}")
    assert all(m["fill"] != "#fff" for m in markers(svg) if "excluded" not in m)
    labels = re.findall(r'<text class="front-label"[^>]*>([^<]*)</text>', svg)
    assert labels == ["ShortGPT · drop-25", "FLAP · width-50"]
    assert "hollow: left out of the front (reason in tooltip)" in re.sub(r"<tspan [^>]*>|</tspan>", "", svg)
    assert "stroke-dasharray" not in svg.split('data-excluded="')[1].split("</g>")[0]  # its hollow says it all
    assert "dashed:" not in svg
    assert "left out of the front" not in str(pareto_svg(points[:1], "t"))


def test_front_labels_keep_clear_of_each_other():
    """Close front points: each label takes the first offset around its marker that overlaps no earlier label."""
    points = [PlotPoint(0.01 * i, 1.0 + 0.02 * i, "static_depth", f"Method {i} · point-{i}") for i in range(8)]
    svg = str(pareto_svg(points, "t"))
    boxes = []
    for x, y, anchor, text in re.findall(
        r'<text class="front-label"[^>]* x="(\S+)" y="(\S+)" text-anchor="(\w+)">([^<]*)</text>', svg
    ):
        width = CHAR_WIDTH * len(text)
        left = float(x) if anchor == "start" else float(x) - width
        boxes.append((left, float(y) - 11, left + width, float(y) + 3))
    assert len(boxes) == 8
    for i, a in enumerate(boxes):
        for b in boxes[:i]:
            assert not (a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]), (a, b)


def test_plots_fill_the_page_width_and_grow_for_a_long_legend():
    few = str(pareto_svg([PlotPoint(0.1, 1.2, "static_depth", "a · p")], "t"))
    assert f'viewBox="0 0 {WIDTH} {HEIGHT}"' in few and WIDTH >= 1000
    many = [PlotPoint(0.01 * i, 1.1, "static_depth", f"m{i:02} · p") for i in range(40)]
    height = int(re.search(r'viewBox="0 0 \d+ (\d+)"', str(pareto_svg(many, "t"))).group(1))
    last = max(
        float(y) for y in re.findall(r'<g class="legend-[^>]*>.*?<text [^>]* y="(\S+)"', str(pareto_svg(many, "t")))
    )
    assert height > HEIGHT and last < height  # the plot keeps its size, the legend its every line


def test_html5_strict_check_catches_misnesting(tmp_path):
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>x</title></head>'
                   "<body><p><b>x</p></b></body></html>")  # fmt: skip
    with pytest.raises(AssertionError):
        check_html5_strict(bad.read_text(), bad)


def test_empty_registry_builds_a_valid_site(engine, tmp_path):
    site = build_site(engine, tmp_path / "site").parent
    for name in ("index.html", "reported.html", "measured.html"):
        check_html5(site / name)
        assert "<svg" not in (site / name).read_text()
    assert "no headline frontier" in (site / "index.html").read_text()
    assert json.loads((site / "data" / "leaderboard.json").read_text())["rows"] == []
    assert json.loads((site / "data" / "reported.json").read_text())["rows"] == []


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
    """Without dense samples the factories' p80/p20 spread, 1.03/0.98 − 1 ≈ 5 %, is above the 3 % threshold:
    flagged and left out of the front, but shown."""

    from prunereg.leaderboard.display import NOISY_SPREAD, noisy
    from prunereg.registry.queries import leaderboard_rows

    submission = make_submission()
    ingest(engine, submission, make_result(submission, paired=False))
    rows = leaderboard_rows(engine)
    assert rows and all(noisy(r) and r.spread > NOISY_SPREAD and r.excluded and not r.pareto for r in rows)
    html = (build_site(engine, tmp_path / "site").parent / "measured.html").read_text()
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
    for name in ("index.html", "measured.html", "data/leaderboard.json"):
        assert (site / name).read_text() == (unmarked / name).read_text(), name

    copy.unlink()
    copy.symlink_to(tmp_path / "elsewhere.json")
    (tmp_path / "elsewhere.json").write_text(superseded.model_dump_json(exclude_defaults=True))
    relinked = build_site(engine, tmp_path / "relinked", submissions=folder).parent
    assert "Superseded submission" not in (relinked / "methods" / "shortgpt-test.html").read_text()


def reported_row(base: str, task: str, device: str = "NVIDIA H200", recovery: dict | None = None, mode: str = "eager"):
    from dataclasses import fields

    from prunereg.registry.queries import ReportedRow, Row

    measured = row("static_depth", "drop-25", 1.5, 0.1, device=device)
    kept = {f.name: getattr(measured, f.name) for f in fields(Row)} | {"execution_mode": mode}
    return ReportedRow(**kept, base_model=base, task=task, recovery=recovery)


def test_the_headline_is_the_base_model_with_the_most_one_shot_rows():
    from prunereg.leaderboard.build import HeadlineChoice, headline_choice

    rows = [
        reported_row("llama-7b", "wikitext2"),
        reported_row("llama-7b", "piqa"),
        reported_row("llama-7b", "piqa"),
        reported_row("llama-7b", "piqa", device="NVIDIA A100"),
        reported_row("llama-2-7b", "wikitext2"),
        reported_row("llama-2-7b", "wikitext2"),
        reported_row("llama-2-7b", "wikitext2"),
        *[reported_row("llama-2-7b", "wikitext2", recovery=RECOVERED)] * 3,  # another budget: does not count
    ]
    assert headline_choice(rows) == HeadlineChoice("llama-7b", "piqa", "NVIDIA H200", "bfloat16", "eager")
    assert headline_choice(rows[::-1]) == headline_choice(rows)
    tie = [reported_row("qwen2.5-7b", "piqa"), reported_row("llama-3-8b", "piqa")]
    assert headline_choice(tie).base_model == "llama-3-8b"  # a tie goes to the first name
    assert headline_choice(rows[-3:]) is None and headline_choice([]) is None
    modes = [reported_row("llama-2-7b", "piqa", mode=mode) for mode in ("eager", "graph", "fused", "compiled")]
    assert headline_choice(modes).execution_mode == "fused"  # a tie goes to the fastest mode, not to "eager" < "fused"
    assert headline_choice([*modes, modes[1]]).execution_mode == "graph"  # more rows first


def quality_of_every_svg_and_table(html: str) -> list[set[str]]:
    """For each <svg> and <table>: the data-quality values on it, or else on the <section> around it."""
    found = []
    for match in re.finditer(r"<(svg|table)\b[^>]*>", html):
        own = re.findall(r'data-quality="([^"]*)"', match.group(0))
        if not own:
            sections = re.findall(r"<section\b[^>]*>|</section>", html[: match.start()])
            opened = sections[-1] if sections and sections[-1] != "</section>" else ""
            own = re.findall(r'data-quality="([^"]*)"', opened)
        found.append(set(own))
    return found


def test_headline_reported_and_measured_pages_keep_the_two_qualities_apart(engine, tmp_path):
    ingest_measured_and_reported(engine)
    site = build_site(engine, tmp_path / "site").parent
    pages = {name: (site / name).read_text() for name in ("index.html", "reported.html", "measured.html")}
    for name in pages:
        check_html5(site / name)

    index = pages["index.html"]
    assert (
        "<strong>Llama-2-7B</strong>" in index
        and "<strong>wikitext2 · perplexity · 2048-token windows</strong>" in index
    )
    assert len(re.findall(r'<svg[^>]*class="pareto" data-quality="reported"', index)) == 2  # prefill and decode
    assert index.count('<table class="bands sortable" data-quality="reported">') == 2
    assert index.count('<table class="realization sortable" data-quality="none"') == 2
    assert 'href="reported.html"' in index and 'href="measured.html"' in index and 'class="methods"' in index
    assert index.count("reported quality (papers&#39; tables) × measured speed") >= 3

    reported = pages["reported.html"]
    assert reported.count('<section id="reported-') == 6  # Llama-2-7B: two tasks; LLaMA-7B; prefill and decode each
    assert reported.count('<section id="recovery-') == 2
    assert reported.index('id="reported-1"') < reported.index('id="recovery"') < reported.index('id="recovery-1"')
    assert '<a href="https://arxiv.org/abs/9999.00002v3">arXiv:9999.00002v3</a>, Table 4, row' in reported
    assert '<q class="paper-row">drop-25 | 6.0</q>' in reported
    assert reported.count("recovery fine-tuning: Alpaca (LoRA)") == 2
    assert "Speed: the latency of Llama-2-7B runs" in reported  # LLaMA-7B's claims

    for name, allowed in (("index.html", {"reported", "none"}), ("reported.html", {"reported"}),
                          ("measured.html", {"measured"})):  # fmt: skip
        qualities = quality_of_every_svg_and_table(pages[name])
        assert qualities and all(len(q) == 1 for q in qualities), name
        assert set().union(*qualities) <= allowed, name
    assert 'data-quality="reported"' not in pages["measured.html"]
    assert 'data-quality="measured"' not in index + reported

    data = json.loads((site / "data" / "reported.json").read_text())
    assert data["quality"] == "reported" and all(r["quality"] == "reported" for r in data["rows"])
    assert len(data["rows"]) == 2 * 6  # five one-shot claims and one with recovery, prefill and decode
    (recovered,) = {json.dumps(r["recovery"]) for r in data["rows"] if r["recovery"]}
    assert json.loads(recovered)["data"] == "Alpaca"
    assert {r["paper_table"] for r in data["rows"]} == {"Table 4"}
    measured = json.loads((site / "data" / "leaderboard.json").read_text())
    assert {r["model"] for r in measured["rows"]} == {"prunereg-mini", "llama-2-7b"} and "quality" not in measured


def test_method_page_shows_disagreeing_sources_side_by_side(engine, tmp_path):
    """A method's own table and a later re-run of the same point, model and task: both shown, none chosen."""
    later = {"source": "reported", "arxiv": "9999.00003v1", "table": "Table 1", "row": "re-run | 30.74"}
    sub = make_submission(
        "slice-test",
        claims=[
            claim("drop-25", 8.12, 5.47, calibration={"data": "WikiText-2 train", "sequences": 1024, "length": 2048}),
            claim("drop-25", 30.74, 5.47, provenance=later, calibration={"data": "Alpaca"}),
            claim("drop-25", 8.12, 5.47, recovery=RECOVERED),  # another budget: no disagreement with those
        ],
    )
    ingest(engine, sub)
    html = (build_site(engine, tmp_path / "site").parent / "methods" / "slice-test.html").read_text()
    (block,) = re.findall(r'<div class="disagreements">(.*?)</div>', html, re.S)
    assert block.count("<li>") == 1 and "8.12" in block and "30.74" in block and "against" in block
    assert "arXiv:9999.00002v3" in block and "arXiv:9999.00003v1" in block and "calibration Alpaca" in block
    assert "re-run | 30.74" in html and "WikiText-2 train, 1024 × 2048 tokens" in html
    assert "2,048-token windows" in html


def test_a_method_keeps_its_shape_across_groups_and_rebuilds(engine, tmp_path):
    """The site shapes a family's methods once: a group without the family's first method still draws the second
    as the square it is elsewhere, also in a group page an incremental rebuild would otherwise keep."""

    def shapes_of(html: str, slug: str) -> set[str]:
        return {
            m["shape"] for svg in re.findall(r"<svg.*?</svg>", html, re.S) for m in markers(svg) if m["method"] == slug
        }

    second = make_submission("z-depth", claims=[])
    ingest(engine, second, make_result(second))
    ingest(engine, second, make_result(second, losses={}, model="llama-3.1-8b", weights="random"))
    site = build_site(engine, tmp_path / "site").parent
    llama = sorted((site / "groups").glob("llama-3.1-8b.*.html"))
    assert llama and all(shapes_of(p.read_text(), "z-depth") == {"circle"} for p in llama)  # alone in its family

    first = make_submission("a-depth", claims=[])
    ingest(engine, first, make_result(first))  # on prunereg-mini only: the Llama groups' rows are unchanged
    build_site(engine, tmp_path / "site")
    assert all(shapes_of(p.read_text(), "z-depth") == {"square"} for p in llama)
    measured = (site / "measured.html").read_text()
    assert shapes_of(measured, "z-depth") == {"square"} and shapes_of(measured, "a-depth") == {"circle"}
