"""The built site in a real browser: selector, sorting, navigation, no network, no script from submissions,
and the reported and measured views never sharing a plot or a table.

Playwright drives Debian's chromium (no `playwright install`, no download): the site is built
from a registry made with the conftest factories, one submission of which carries markup payloads
in every free-text field the schema accepts, and is served on 127.0.0.1 by a thread; a second site
adds papers' claims joined with llama-2-7b random-weight runs, for the headline and reported views.
Screenshots of the headline, the reported and measured views and a method page go to tests/screenshots/
(ignored by git) for a person to look at.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from browsers import serve
from factories import CAPTURE_ERROR, in_mode, ingest_measured_and_reported, make_result, make_submission

from prunereg.leaderboard.build import build_site
from prunereg.registry.ingest import ingest
from prunereg.spec.results import EvaluationResult, latency_summary
from prunereg.spec.submission import Submission

SCREENSHOTS = Path(__file__).parent / "screenshots"
PWN = '<img src=x onerror="window.__pwned=1">'
PAYLOAD = f'<script>alert(1)</script> "><img src=x onerror=alert(1)> {PWN} \'><svg onload="window.__pwned=2">'

pytestmark = pytest.mark.browser


def hostile_submission() -> Submission:
    """Markup in every free-text field: method and point descriptions, a measured-elsewhere note."""
    document = make_submission("hostile-method", name="Hostile & method", description=PAYLOAD, claims=[]).model_dump(
        mode="json", exclude_none=True
    )
    for point in document["adapter"]["operating_points"]:
        point["description"] = PAYLOAD
    document["quality_claims"] = [
        {
            "base_model": "llama-2-7b",
            "operating_point": "drop-25",
            "task": "wikitext2",
            "metric": "perplexity",
            "higher_is_better": False,
            "value": 9.0,
            "dense_value": 6.0,
            "provenance": {"source": "measured", "by": "Someone & co", "note": PAYLOAD},
        }
    ]
    return Submission.model_validate(document)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from prunereg.registry.db import connect

    folder = tmp_path_factory.mktemp("browser")
    engine = connect(f"sqlite:///{folder / 'registry.db'}")
    depth = make_submission("shortgpt-test")
    ingest(
        engine,
        depth,
        make_result(depth, speedups={"drop-25": 1.3, "drop-50": 1.9}, losses={"drop-25": 0.03, "drop-50": 0.2}),
    )
    width = make_submission("flap-test", adapter="width", name="FLAP test", claims=[])
    ingest(
        engine,
        width,
        make_result(width, speedups={"width-25": 1.1, "width-50": 1.5}, losses={"width-25": 0.05, "width-50": 0.12}),
    )
    graph = make_result(width, speedups={"width-25": 1.1, "width-50": 1.8}, losses={"width-25": 0.05, "width-50": 0.12})
    ingest(engine, width, in_mode(graph, "graph", {"width-25": CAPTURE_ERROR}))
    hostile = hostile_submission()
    ingest(engine, hostile, make_result(hostile))
    ingest(
        engine, hostile, in_mode(make_result(hostile), "graph", {"drop-25": PAYLOAD[:300]})
    )  # an error message is text too
    random = make_submission("random-weights", adapter="width", claims=[])
    ingest(engine, random, make_result(random, losses={}, model="llama-3.1-8b", weights="random"))
    site = build_site(engine, folder / "site").parent
    engine.dispose()
    with serve(site) as origin:
        yield origin


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    """Measured quality on the embedded model and papers' claims on llama-2-7b random-weight runs."""
    from prunereg.registry.db import connect

    folder = tmp_path_factory.mktemp("both")
    engine = connect(f"sqlite:///{folder / 'registry.db'}")
    ingest_measured_and_reported(engine)
    site = build_site(engine, folder / "site").parent
    engine.dispose()
    with serve(site) as origin:
        yield origin


def with_samples(result: EvaluationResult, point: str, pruned: list[float], dense: list[float] | None = None):
    """`result` with `point` timed as `pruned` (and the dense model as `dense`) times its medians, every scenario:
    the percentiles follow the samples, and ingestion computes the interval from them (None without `dense`)."""
    points = []
    for p in result.points:
        if p.operating_point == point:
            latency = []
            for lat in p.latency:
                samples = [lat.median * f for f in pruned]
                dense_samples = None if dense is None else [lat.dense_median * f for f in dense]
                update = {"samples": samples, **latency_summary(samples), "dense_samples": dense_samples}
                latency.append(lat.model_copy(update=update))
            p = p.model_copy(update={"latency": latency})
        points.append(p)
    return result.model_copy(update={"points": points})


@pytest.fixture(scope="module")
def uncertain(tmp_path_factory):
    """A noisy point that would lead the front (left out of it), and a steady one timed without dense samples
    (no interval); the others have intervals from the factories' steady dense samples."""
    from prunereg.registry.db import connect

    folder = tmp_path_factory.mktemp("uncertain")
    engine = connect(f"sqlite:///{folder / 'registry.db'}")
    depth = make_submission("shortgpt-test")
    result = make_result(depth, speedups={"drop-25": 1.3, "drop-50": 1.9}, losses={"drop-25": 0.03, "drop-50": 0.2})
    ingest(engine, depth, with_samples(result, "drop-50", [0.7, 0.85, 1.0, 1.2, 1.4], dense=[1.0] * 5))
    width = make_submission("flap-test", adapter="width", name="FLAP test", claims=[])
    result = make_result(
        width, speedups={"width-25": 1.1, "width-50": 1.5}, losses={"width-25": 0.05, "width-50": 0.12}
    )
    ingest(engine, width, with_samples(result, "width-25", [0.99, 1.0, 1.01]))
    site = build_site(engine, folder / "site").parent
    engine.dispose()
    with serve(site) as origin:
        yield origin


def visible_groups(page) -> list[str]:
    return page.eval_on_selector_all("section.group", "els => els.filter(e => !e.hidden).map(e => e.id)")


def test_selector_changes_the_visible_plot_and_table(served, watched):
    page = watched.page
    page.goto(f"{served}/measured.html")
    assert page.locator("form#scenario").is_visible()
    groups = page.locator("section.group").count()
    assert groups == 6  # prunereg-mini eager and graph, llama-3.1-8b eager; prefill and decode
    first = visible_groups(page)
    assert 0 < len(first) < groups
    heading = page.locator("h2#results").inner_text()
    assert "prefill" in heading and f"of {groups} groups" in heading

    page.select_option("select[name=phase]", "decode")
    second = visible_groups(page)
    assert second and set(second).isdisjoint(first)
    for anchor in second:
        assert page.locator(f"#{anchor}").get_attribute("data-phase") == "decode"
        assert page.locator(f"#{anchor} svg.realization").is_visible()
        assert page.locator(f"#{anchor} table.rows").is_visible()
    for anchor in first:
        assert not page.locator(f"#{anchor} svg.realization").is_visible()
        assert not page.locator(f"#{anchor} table.rows").is_visible()
    assert "decode" in page.locator("h2#results").inner_text()

    page.select_option("select[name=phase]", "")
    assert len(visible_groups(page)) == 4  # still eager only
    page.select_option("select[name=mode]", "")
    assert len(visible_groups(page)) == groups
    watched.assert_clean(served)


def test_harness_tables_follow_the_scenario_but_span_the_modes(served, watched):
    page = watched.page
    page.goto(f"{served}/measured.html")

    def shown() -> list[str]:
        return page.eval_on_selector_all("table.harness", "els => els.filter(e => !e.hidden).map(e => e.dataset.phase)")

    assert page.locator("table.harness").count() == 2  # prunereg-mini prefill and decode, eager and graph
    assert shown() == ["prefill"]
    page.select_option("select[name=mode]", "graph")
    assert shown() == ["prefill"]
    page.select_option("select[name=phase]", "decode")
    assert shown() == ["decode"]
    table = page.locator("table.harness:not([hidden])")
    assert table.locator("thead th").all_inner_texts()[-2:] == ["eager", "graph"]
    line = table.locator("tbody tr", has_text="width-25")
    assert f"fell back to eager: {CAPTURE_ERROR}" in line.inner_text()
    assert line.locator(".fallback").is_visible()
    watched.assert_clean(served)


def test_clicking_a_header_sorts_the_table(served, watched):
    page = watched.page
    page.goto(f"{served}/measured.html")
    anchor = visible_groups(page)[0]
    table = page.locator(f"#{anchor} table.rows")
    header = table.locator("thead th", has_text="Speedup").first

    def speedups() -> list[float]:
        cells = table.locator("tbody tr td:nth-child(5)").all_inner_texts()
        return [float(c.split("×")[0]) for c in cells]  # the speedup, before any interval

    header.click()
    assert speedups() == sorted(speedups())
    assert header.get_attribute("aria-sort") == "ascending"
    header.click()
    assert speedups() == sorted(speedups(), reverse=True)
    assert header.get_attribute("aria-sort") == "descending"
    table.locator("thead th", has_text="Method").first.click()
    names = table.locator("tbody tr td:nth-child(1)").all_inner_texts()
    assert names == sorted(names, key=str.lower) or names == sorted(names)
    watched.assert_clean(served)


def test_method_pages_open_from_the_index(served, watched):
    page = watched.page
    page.goto(f"{served}/index.html")
    links = page.locator("ul.methods a")
    assert links.count() == 4
    page.locator("ul.methods a", has_text="FLAP test").click()
    page.wait_for_url("**/methods/flap-test.html")
    assert page.locator("h1").inner_text() == "FLAP test"
    assert page.locator("table").count() >= 3
    page.locator("header.site nav a", has_text="Measured quality").click()
    page.wait_for_url("**/measured.html")
    assert page.locator("section.group").count() == 6
    page.locator("header.site nav a", has_text="Reported quality").click()
    page.wait_for_url("**/reported.html")
    page.locator("header.site > a").click()
    page.wait_for_url("**/index.html")
    assert "no headline frontier" in page.locator("main").inner_text()  # no claim meets a timed base model here
    watched.assert_clean(served)


def test_hostile_submission_executes_nothing(served, watched):
    page = watched.page
    for path in ("index.html", "measured.html", "reported.html", "methods/hostile-method.html"):
        page.goto(f"{served}/{path}")
        page.wait_for_load_state("load")
        page.wait_for_timeout(200)  # let any onerror or timer fire
        assert watched.dialogs == [], f"{path} ran submission script: {watched.dialogs}"
        assert page.evaluate("typeof window.__pwned") == "undefined", f"{path} ran a submission's event handler"
    page.goto(f"{served}/methods/hostile-method.html")
    page.locator("details summary").first.click()  # open the submission JSON as well
    text = page.locator("main").inner_text()
    assert "<script>alert(1)</script>" in text and 'onerror="window.__pwned=1"' in text  # shown as text
    assert page.locator("main img, main script, main iframe").count() == 0
    assert page.locator("p.description").inner_text() == PAYLOAD
    watched.assert_clean(served)


def test_headline_shows_the_reported_frontier_its_bands_and_realization_with_both_views_one_click_away(both, watched):
    page = watched.page
    page.goto(f"{both}/index.html")
    lead = page.locator("p.lead").inner_text()
    assert "Llama-2-7B" in lead and "wikitext2 · perplexity · 2048-token windows" in lead
    assert "NVIDIA H200" in lead and "eager" in lead and "reported quality (papers' tables) × measured speed" in lead
    headline = page.locator("section[id^=headline-]")
    assert headline.count() == 2  # prefill and decode
    for i in range(2):
        assert headline.nth(i).locator("svg.pareto").is_visible()
        assert headline.nth(i).locator("table.bands").is_visible()
        assert "reported quality (papers' tables) × measured speed" in headline.nth(i).inner_text().lower()
    assert page.locator("table.realization").count() == 2
    assert "static M, depth" in page.locator("table.realization").first.inner_text()
    assert page.locator("ul.methods a").count() == 2
    page.locator("p.views a", has_text="measured quality").click()
    page.wait_for_url("**/measured.html")
    assert page.locator("section.group svg.pareto").first.is_visible()
    page.go_back()
    page.locator("p.views a", has_text="reported quality").click()
    page.wait_for_url("**/reported.html")
    assert page.locator("section.reported").count() == 8
    watched.assert_clean(both)


QUALITIES = """() => Array.from(document.querySelectorAll("svg, table")).map(el => {
  const seen = new Set();
  for (let e = el; e && e.getAttribute; e = e.parentElement) {
    if (e.hasAttribute("data-quality")) seen.add(e.getAttribute("data-quality"));
  }
  el.querySelectorAll("[data-quality]").forEach(d => seen.add(d.getAttribute("data-quality")));
  const section = el.closest("section");
  return {
    what: el.tagName.toLowerCase() + "." + (el.getAttribute("class") || ""),
    own: el.getAttribute("data-quality") || (section && section.getAttribute("data-quality")) || null,
    seen: Array.from(seen),
    text: el.textContent.toLowerCase(),
  };
})"""
"""Each svg and table: its data-quality (on it, else on its closest section), and every value on it, around it and in it."""


def test_reported_and_measured_never_share_a_plot_or_a_table(both, watched):
    page = watched.page
    found = {}
    for name in ("index.html", "reported.html", "measured.html"):
        page.goto(f"{both}/{name}")
        found[name] = page.evaluate(QUALITIES)
        assert found[name], name
        for element in found[name]:
            assert element["own"] is not None, (name, element["what"])
            assert element["seen"] == [element["own"]], (name, element["what"], element["seen"])
            other = "measured" if element["own"] == "reported" else "reported"
            assert f"{other} quality" not in element["text"], (name, element["what"])
    assert {e["own"] for e in found["measured.html"]} == {"measured"}
    assert {e["own"] for e in found["reported.html"]} == {"reported"}
    assert {e["own"] for e in found["index.html"]} == {"reported", "none"}  # the realization tables hold no quality
    headline_plots = [e for e in found["index.html"] if e["what"] == "svg.pareto"]
    assert len(headline_plots) == 2 and all(e["own"] == "reported" for e in headline_plots)
    page.goto(f"{both}/measured.html")
    assert page.locator('[data-quality="reported"]').count() == 0
    assert page.locator("section.group svg.pareto").count() == 2 and page.locator("table.rows").count() == 4
    for name in ("index.html", "reported.html"):
        page.goto(f"{both}/{name}")
        assert page.locator('[data-quality="measured"]').count() == 0, name
        assert page.locator("section.group, table.harness").count() == 0, name
    watched.assert_clean(both)


def test_recovery_groups_come_after_the_one_shot_ones_and_are_labelled(both, watched):
    page = watched.page
    page.goto(f"{both}/reported.html")
    sections = page.eval_on_selector_all("section.reported", "els => els.map(e => e.classList.contains('recovery'))")
    assert sections == [False] * 6 + [True] * 2
    assert page.locator("h2#recovery").inner_text() == "With recovery fine-tuning: 2 groups"
    for section in page.locator("section.recovery").all():
        assert section.locator("h3 .mark.recovery").inner_text() == "with recovery fine-tuning"
        budgets = section.locator("table.rows tbody tr td:nth-child(10)").all_inner_texts()
        assert budgets == ["recovery fine-tuning: Alpaca (LoRA)"]
    one_shot = page.locator("section.reported:not(.recovery)")
    assert one_shot.locator(".mark.recovery").count() == 0
    assert set(one_shot.locator("table.rows tbody tr td:nth-child(10)").all_inner_texts()) == {"one-shot"}
    source = page.locator("#reported-1 table.rows tbody tr", has_text="drop-25").locator("td.source")
    assert source.inner_text() == "arXiv:9999.00002v3, Table 4, row drop-25 | 6.0"  # the <q>'s marks are CSS's
    assert source.locator("q.paper-row").inner_text() == "drop-25 | 6.0"  # the paper's row as printed
    assert source.locator("a").get_attribute("href") == "https://arxiv.org/abs/9999.00002v3"
    watched.assert_clean(both)


def test_the_views_read_whole_without_script(both, browser):
    context = browser.new_context(java_script_enabled=False)
    page = context.new_page()
    try:
        page.goto(f"{both}/index.html")
        assert page.locator("section[id^=headline-] svg.pareto").first.is_visible()
        assert page.locator("table.realization").first.is_visible()
        page.goto(f"{both}/measured.html")
        assert not page.locator("form#scenario").is_visible()
        assert all(s.is_visible() for s in page.locator("section.group").all())
        page.goto(f"{both}/reported.html")
        assert all(s.is_visible() for s in page.locator("section.reported").all())
    finally:
        context.close()


def test_screenshots(served, both, watched):
    SCREENSHOTS.mkdir(exist_ok=True)
    page = watched.page
    shots = {
        "index.png": f"{both}/index.html",
        "reported.png": f"{both}/reported.html",
        "measured.png": f"{served}/measured.html",
        "method.png": f"{served}/methods/shortgpt-test.html",
    }
    for name, url in shots.items():
        page.goto(url)
        page.screenshot(path=str(SCREENSHOTS / name), full_page=True)
        assert (SCREENSHOTS / name).stat().st_size > 10_000
    print(f"screenshots in {SCREENSHOTS}")
    assert watched.errors == [] and watched.dialogs == []


MARKERS = """svg => Array.from(svg.querySelectorAll("g.point")).map(g => {
  const marker = g.querySelector(".marker");
  const style = getComputedStyle(marker);
  return {
    method: g.dataset.method, family: g.dataset.family, excluded: g.dataset.excluded || null,
    shape: marker.dataset.shape, fill: style.fill, stroke: style.stroke,
    title: g.querySelector("title").textContent, bar: g.querySelector(".error-bar") !== null,
    opacity: parseFloat(getComputedStyle(g).opacity), highlighted: g.classList.contains("highlighted"),
  };
})"""
"""Each plotted point of an svg as the browser draws it: method, family, shape, computed fill and stroke, tooltip."""


def first_pareto(page):
    return page.locator("section.group:not([hidden]) svg.pareto").first


def test_the_plot_names_every_method_once_and_tells_two_of_one_family_apart_by_shape(served, watched):
    page = watched.page
    page.goto(f"{served}/measured.html")
    svg = first_pareto(page)
    assert svg.is_visible()
    box = svg.bounding_box()
    assert box["width"] >= 1000 and box["height"] >= 500  # the page's width, not a third of it
    points = svg.evaluate(MARKERS)
    methods = {p["method"] for p in points}
    assert methods == {"shortgpt-test", "hostile-method", "flap-test"}
    legend = svg.locator("g.legend-method").evaluate_all("els => els.map(e => e.dataset.method)")
    assert sorted(legend) == sorted(methods)  # one entry per method, no more
    names = svg.locator("g.legend-method text").all_text_contents()
    assert "FLAP test" in names and "Hostile & method" in names
    depth = {p["method"]: (p["shape"], p["fill"]) for p in points if p["family"] == "static_depth"}
    assert len(depth) == 2
    (shape_a, fill_a), (shape_b, fill_b) = depth.values()
    assert shape_a != shape_b and fill_a == fill_b  # one family colour, one shape per method
    for method in methods:  # every point of a method looks alike
        assert len({(p["shape"], p["fill"]) for p in points if p["method"] == method}) == 1
    watched.assert_clean(served)


def test_choosing_a_method_highlights_its_markers_and_rows(served, watched):
    page = watched.page
    page.goto(f"{served}/measured.html")
    form = page.locator("form#highlight")
    assert form.is_visible()
    svg = first_pareto(page)
    assert all(p["opacity"] == 1 and not p["highlighted"] for p in svg.evaluate(MARKERS))
    page.select_option("form#highlight select[name=method]", "flap-test")
    points = svg.evaluate(MARKERS)
    chosen = [p for p in points if p["method"] == "flap-test"]
    others = [p for p in points if p["method"] != "flap-test"]
    assert chosen and others
    assert all(p["highlighted"] and p["opacity"] == 1 for p in chosen)
    assert all(not p["highlighted"] and p["opacity"] < 0.5 for p in others)
    rows = page.locator("section.group:not([hidden]) table.rows tbody tr")
    marked = rows.evaluate_all("rs => rs.map(r => [r.dataset.method, r.classList.contains('highlighted'), "
                               "getComputedStyle(r.cells[1]).backgroundColor])")  # fmt: skip
    flap = {background for method, on, background in marked if method == "flap-test" and on}
    rest = {background for method, on, background in marked if method != "flap-test" and not on}
    assert len(flap) == 1 and flap.isdisjoint(rest)  # its rows, and only its rows, stand out
    assert len([m for m in marked if m[1]]) == len([m for m in marked if m[0] == "flap-test"])
    page.select_option("form#highlight select[name=method]", "")
    assert all(p["opacity"] == 1 for p in svg.evaluate(MARKERS))
    watched.assert_clean(served)


def test_without_script_the_plot_and_tables_show_and_the_highlighter_hides(served, browser):
    context = browser.new_context(java_script_enabled=False, viewport={"width": 1280, "height": 900})
    page = context.new_page()
    try:
        page.goto(f"{served}/measured.html")
        assert not page.locator("form#highlight").is_visible()
        svg = page.locator("svg.pareto").first
        assert svg.is_visible() and svg.locator("g.point").first.is_visible()
        assert all(p["opacity"] == 1 for p in svg.evaluate(MARKERS))
        assert svg.locator("g.legend-method").count() == 3
        assert all(t.is_visible() for t in page.locator("table.rows").all())
    finally:
        context.close()


def test_points_with_an_interval_have_an_error_bar_that_spans_it(uncertain, watched):
    page = watched.page
    page.goto(f"{uncertain}/measured.html")
    svg = first_pareto(page)
    points = {p["title"].split(":")[0]: p for p in svg.evaluate(MARKERS)}
    assert len(points) == 4
    assert not points["FLAP test · width-25"]["bar"]  # timed without dense samples: no interval, no bar
    assert "interval" not in points["FLAP test · width-25"]["title"]
    assert all(p["bar"] for label, p in points.items() if label != "FLAP test · width-25")
    rows = page.evaluate("fetch('data/leaderboard.json').then(r => r.json())")["rows"]
    steady = next(r for r in rows if (r["operating_point"], r["phase"]) == ("drop-25", "prefill"))
    low, high = steady["speedup_low"], steady["speedup_high"]
    assert low < steady["speedup"] < high
    assert f"interval {low:.2f}–{high:.2f}×" in points["Shortgpt Test · drop-25"]["title"]
    spans = svg.locator("g.point:has(.error-bar)").evaluate_all(
        """gs => gs.map(g => {
          const bar = g.querySelector(".error-bar").getBBox(), marker = g.querySelector(".marker").getBBox();
          return [bar.y, marker.y + marker.height / 2, bar.y + bar.height, bar.height];
        })"""
    )
    assert len(spans) == 3 and all(top < centre < bottom and height > 0 for top, centre, bottom, height in spans)
    watched.assert_clean(uncertain)


def test_an_excluded_point_is_hollow_and_its_title_says_why(uncertain, watched):
    page = watched.page
    page.goto(f"{uncertain}/measured.html")
    svg = first_pareto(page)
    points = {p["title"].split(":")[0]: p for p in svg.evaluate(MARKERS)}
    noisy = points["Shortgpt Test · drop-50"]
    assert noisy["excluded"] and noisy["excluded"].startswith("speedup interval")
    assert f"left out of the front: {noisy['excluded']}" in noisy["title"]
    assert noisy["fill"] == "rgb(255, 255, 255)" and noisy["stroke"] != "rgb(255, 255, 255)"
    assert all(p["fill"] != "rgb(255, 255, 255)" and p["excluded"] is None for p in points.values() if p is not noisy)
    labels = svg.locator("text.front-label").all_text_contents()
    assert "Shortgpt Test · drop-50" not in labels and "Shortgpt Test · drop-25" in labels
    legend = svg.locator("g.legend-style text").all_text_contents()
    assert "hollow: left out of the front (reason in tooltip)" in legend
    watched.assert_clean(uncertain)


def test_the_highlighter_lists_the_methods_of_the_page_and_marks_them_on_every_plot(both, watched):
    page = watched.page
    page.goto(f"{both}/index.html")
    options = page.locator("form#highlight select[name=method] option").evaluate_all("os => os.map(o => o.value)")
    plots = page.locator("svg.pareto")
    assert plots.count() == 2
    plotted = {p["method"] for i in range(2) for p in plots.nth(i).evaluate(MARKERS)}
    assert options == ["", *sorted(plotted)] and len(plotted) == 2
    page.select_option("form#highlight select[name=method]", "shortgpt-test")
    for i in range(2):
        for p in plots.nth(i).evaluate(MARKERS):
            assert p["highlighted"] == (p["method"] == "shortgpt-test")
            assert (p["opacity"] == 1) == (p["method"] == "shortgpt-test")
    watched.assert_clean(both)
