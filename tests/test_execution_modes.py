"""Execution modes in the registry and on the site: how each scenario really ran, why it fell back,
the GPU's state around the repeats, and one point's realization under each harness side by side."""

from __future__ import annotations

import csv
import io
import re
from dataclasses import replace

import pytest
from backends import BACKENDS, backend_url
from factories import CAPTURE_ERROR, GPU_AFTER, GPU_BEFORE, in_mode, make_result, make_submission, row
from pages import check_html5, export
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from prunereg.leaderboard.build import build_site
from prunereg.leaderboard.display import gpu_change
from prunereg.registry.db import connect
from prunereg.registry.export import LATENCY_COLUMNS, latency_records
from prunereg.registry.harness import harness_tables
from prunereg.registry.ingest import ingest
from prunereg.registry.queries import leaderboard_rows
from prunereg.registry.schema import LatencyMeasurement
from prunereg.spec.results import EXECUTION_MODES, EvaluationResult

THEORETICAL = {"width-25": 1.30, "width-50": 1.87}
EAGER = {"width-25": 0.98, "width-50": 1.00}  # launch-bound eager decode hides width pruning's gain
GRAPH = {"width-25": 1.01, "width-50": 1.80}  # width-25 fell back, so its figure is an eager one


@pytest.fixture
def width():
    return make_submission("llm-pruner-test", adapter="width", name="LLM-Pruner test", claims=[])


def ingest_both_modes(engine, width) -> None:
    """The same submission timed by the eager harness and by the graph harness (width-25 fell back)."""
    ingest(engine, width, make_result(width, speedups=EAGER, theoretical=THEORETICAL))
    graph = make_result(width, speedups=GRAPH, theoretical=THEORETICAL)
    ingest(engine, width, in_mode(graph, "graph", {"width-25": CAPTURE_ERROR}))


@pytest.mark.parametrize("backend", BACKENDS)
def test_ingest_stores_how_each_scenario_ran(backend, width, tmp_path):
    with backend_url(backend, tmp_path) as url:
        engine = connect(url)
        ingest_both_modes(engine, width)
        with Session(engine) as session:
            stored = {(m.run.execution_mode, m.run.operating_point.name, m.execution, m.fallback, m.gpu_after is None)
                      for m in session.scalars(select(LatencyMeasurement))}  # fmt: skip
        assert stored == {
            ("eager", "width-25", "eager", None, True),
            ("eager", "width-50", "eager", None, True),
            ("graph", "width-25", "eager", CAPTURE_ERROR, False),
            ("graph", "width-50", "graph", None, False),
        }
        with engine.connect() as connection:  # no reading is SQL NULL, as in rows from before revision 0002
            sql = "SELECT count(*) FROM latency_measurements WHERE gpu_before IS NULL"
            assert connection.execute(text(sql)).scalar() == 4
        rows = leaderboard_rows(engine)
        graph = [r for r in rows if r.execution_mode == "graph"]
        assert {(r.operating_point, r.execution, r.fallback) for r in graph} == {
            ("width-25", "eager", CAPTURE_ERROR), ("width-50", "graph", None),
        }  # fmt: skip
        assert all(r.gpu_before == GPU_BEFORE.model_dump() and r.gpu_after == GPU_AFTER.model_dump() for r in graph)
        assert {gpu_change(r) for r in rows} == {None, "1980→1755 MHz, 41→47 °C; sw_power_cap"}
        engine.dispose()


def test_gpu_change_names_a_missing_reading():
    (row,) = [r for r in _rows_of_one_point() if r.execution_mode == "graph"]
    assert gpu_change(replace(row, gpu_before=None)) == "?→1755 MHz, ?→47 °C; sw_power_cap"
    assert gpu_change(replace(row, gpu_after=None)) == "1980→? MHz, 41→? °C"


@pytest.mark.parametrize(
    ("execution", "fallback"),
    [("eager", None), ("graph", CAPTURE_ERROR)],
    ids=["mode-left-silently", "reason-without-leaving"],
)
def test_ingest_refuses_a_fallback_that_does_not_add_up(engine, width, execution, fallback):
    result = in_mode(make_result(width), "graph")
    document = result.model_dump(mode="json")
    document["points"][0]["latency"][0].update(execution=execution, fallback=fallback)
    with pytest.raises(ValueError, match="width-25 prefill-b1-s256: ran"):
        ingest(engine, width, EvaluationResult.model_validate(document))
    assert leaderboard_rows(engine) == []


def test_export_carries_execution_fallback_and_gpu_columns(engine, width, tmp_db):
    ingest_both_modes(engine, width)
    records = {(r["env_execution_mode"], r["operating_point"], r["scenario"]): r for r in latency_records(engine)}
    fell_back = records[("graph", "width-25", "decode-b1-c256")]
    assert (fell_back["execution"], fell_back["fallback"]) == ("eager", CAPTURE_ERROR)
    assert (fell_back["gpu_before_sm_clock_mhz"], fell_back["gpu_after_sm_clock_mhz"]) == (1980, 1755)
    assert (fell_back["gpu_before_temperature_c"], fell_back["gpu_after_power_w"]) == (41, 655.0)
    assert (
        fell_back["gpu_after_clock_event_reasons"] == "sw_power_cap"
        and fell_back["gpu_before_clock_event_reasons"] == ""
    )
    eager = records[("eager", "width-50", "prefill-b1-s256")]
    assert eager["execution"] == "eager" and eager["fallback"] is None and eager["gpu_before_sm_clock_mhz"] is None
    rows = list(csv.DictReader(io.StringIO(export(tmp_db, "--format", "csv"))))
    assert tuple(rows[0]) == LATENCY_COLUMNS
    graph = [r for r in rows if r["env_execution_mode"] == "graph" and r["operating_point"] == "width-50"]
    assert len(graph) == 2 and all(
        (r["execution"], r["fallback"], r["gpu_after_sm_clock_mhz"], r["gpu_after_clock_event_reasons"])
        == ("graph", "", "1755", "sw_power_cap")
        for r in graph
    )


def _rows_of_one_point():
    """Leaderboard rows of one point in one scenario, eager and graph, built by hand."""
    eager = row("static_width", "width-50", 1.0, None, theoretical=1.87)
    graph = replace(eager, execution_mode="graph", execution="graph", speedup=1.8, realization=1.8 / 1.87,
                    gpu_before=GPU_BEFORE.model_dump(), gpu_after=GPU_AFTER.model_dump())  # fmt: skip
    return [eager, graph]


def test_harness_table_needs_two_modes_and_takes_medians_of_repeated_runs():
    eager, graph = _rows_of_one_point()
    assert harness_tables([eager]) == []
    again = replace(eager, environment_key="f" * 16, speedup=1.1, realization=1.1 / 1.87)
    other = replace(eager, operating_point="width-25", theoretical_speedup=1.3, realization=1.0 / 1.3)
    (table,) = harness_tables([eager, again, graph, other])
    assert table.modes == ["eager", "graph"] and (table.phase, table.batch_size) == ("prefill", 1)
    assert [line.operating_point for line in table.lines] == ["width-25", "width-50"]
    only_eager, both = table.lines
    assert list(only_eager.modes) == ["eager"]
    assert both.modes["eager"].runs == 2 and both.modes["eager"].speedup == pytest.approx(1.05)
    assert both.modes["graph"].realization == pytest.approx(1.8 / 1.87) and both.modes["graph"].fallbacks == ()


def cells(html: str, table_class: str, point: str) -> list[list[str]]:
    """The text of every cell of each row naming `point` in tables of `table_class`."""
    tables = re.findall(rf'<table class="{table_class}[^"]*"[^>]*>.*?</table>', html, re.S)
    rows = [r for t in tables for r in re.findall(r"<tr[^>]*>(.*?)</tr>", t, re.S) if f"<td>{point}" in r]
    return [[re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", r, re.S)] for r in rows]


def test_site_sets_eager_and_graph_side_by_side_and_flags_the_fallback(engine, width, tmp_path):
    ingest_both_modes(engine, width)
    index = build_site(engine, tmp_path / "site")
    html = (index.parent / "measured.html").read_text()
    for page in sorted(index.parent.rglob("*.html")):
        check_html5(page)

    assert html.count('<table class="harness sortable"') == 2  # prefill and decode, each measured in both modes
    for mode, meaning in EXECUTION_MODES.items():
        assert f"<dt>{mode}</dt><dd>{meaning.replace(chr(39), '&#39;')}</dd>" in html
    assert re.search(r"<th[^>]*>Theoretical</th><th[^>]*>eager</th><th[^>]*>graph</th></tr>", html)
    (prefill, decode) = cells(html, "harness", "width-50")
    assert prefill == decode == ["LLM-Pruner test", "static NK, width", "width-50", "1.87×",
                                 "53.5 % (1.00×)", "96.3 % (1.80×)"]  # fmt: skip
    fell_back = cells(html, "harness", "width-25")[0]
    assert fell_back[4] == "75.4 % (0.98×)"
    assert fell_back[5] == f"77.7 % (1.01×) (fell back to eager: {CAPTURE_ERROR})"

    assert html.count('class="note fallback"') == 2 + 2  # the two graph groups' width-25 rows, the harness cells
    latencies = [c[3] for c in cells(html, "rows", "width-25")]  # eager and graph groups, prefill and decode
    assert len(latencies) == 4
    assert sum(text.endswith(f"(fell back to eager: {CAPTURE_ERROR})") for text in latencies) == 2

    method = (index.parent / "methods" / "llm-pruner-test.html").read_text()
    assert method.count("1980→1755 MHz, 41→47 °C; sw_power_cap") == 4  # the graph runs' four scenarios
    assert method.count(f"(fell back from graph: {CAPTURE_ERROR})") == 2


def test_single_mode_site_says_there_is_nothing_to_compare(engine, width, tmp_path):
    ingest(engine, width, make_result(width))
    html = (build_site(engine, tmp_path / "site").parent / "measured.html").read_text()
    assert 'class="harness sortable"' not in html
    assert "Every scenario so far was measured in one execution mode (eager)" in html


def test_a_fallback_reason_is_text_not_markup(engine, width, tmp_path):
    """The reason is an exception's message, and messages quote code: "<class 'Tensor'>", or worse."""
    reason = "RuntimeError: <script>alert(1)</script> <img src=x onerror=alert(1)>"
    ingest(engine, width, in_mode(make_result(width), "graph", {"width-25": reason}))
    site = build_site(engine, tmp_path / "site").parent
    for page in (site / "measured.html", site / "methods" / "llm-pruner-test.html"):
        check_html5(page)
        html = page.read_text()
        assert "&lt;script&gt;alert(1)&lt;/script&gt; &lt;img src=x onerror=alert(1)&gt;" in html
        assert "<script>alert" not in html and "<img" not in html


FUSED = {"width-25": 1.25, "width-50": 1.84}
REFUSED = "fused mode refused the pruned model: FusedRefusal: a sliding window of 16 tokens inside a 257-token cache"


def test_a_fused_run_that_fell_back_to_graph_is_stored_and_set_beside_eager(engine, width, tmp_path):
    """Fused mode falls back to graph mode (not eager): the point records that it ran graph, and why."""
    ingest(engine, width, make_result(width, speedups=EAGER, theoretical=THEORETICAL))
    document = in_mode(make_result(width, speedups=FUSED, theoretical=THEORETICAL), "fused").model_dump(mode="json")
    for point in document["points"]:
        if point["operating_point"] == "width-25":
            for latency in point["latency"]:
                latency.update(execution="graph", fallback=REFUSED)
    ingest(engine, width, EvaluationResult.model_validate(document))
    fused = [r for r in leaderboard_rows(engine) if r.execution_mode == "fused"]
    assert {(r.operating_point, r.execution, r.fallback) for r in fused} == {
        ("width-25", "graph", REFUSED), ("width-50", "fused", None),
    }  # fmt: skip
    html = (build_site(engine, tmp_path / "site").parent / "measured.html").read_text()
    assert re.search(r"<th[^>]*>Theoretical</th><th[^>]*>eager</th><th[^>]*>fused</th></tr>", html)
    assert f"<dt>fused</dt><dd>{EXECUTION_MODES['fused'].replace(chr(39), '&#39;')}</dd>" in html
    assert cells(html, "harness", "width-50")[0][5] == "98.4 % (1.84×)"
