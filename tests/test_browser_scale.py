"""The site of a large registry in a real browser: the landing page, the measured view's group list and a group's
paginated pages open without a console error within the time stated here, and read without script.

12,000 latency rows (60 methods x 4 points x 5 devices x 10 scenarios, 50 groups of 240 rows) filled by
benchmarks/site_scale.py's bulk inserts; the landing page's method list and the group tables' pages are made
smaller than the shipped limits (20 methods, 100 rows a page) so that this registry shows every large-registry
layout. Chromium and the page helpers are tests/browsers.py's.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from browsers import serve

from prunereg.leaderboard import build
from prunereg.registry.db import connect

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import site_scale  # type: ignore[import-not-found]  # noqa: E402

pytestmark = pytest.mark.browser
LOAD_MS = 15_000
"""Each page of this site must finish loading within this time: a page's size must not grow with the registry."""
METHODS = 60
PAGE_ROWS = 100


@pytest.fixture(scope="module")
def large(tmp_path_factory):
    folder = tmp_path_factory.mktemp("large")
    engine = connect(f"sqlite:///{folder / 'registry.db'}")
    site_scale.fill(engine, METHODS)
    with pytest.MonkeyPatch.context() as patched:
        patched.setattr(build, "METHODS_INLINE", 20)
        patched.setattr(build, "PAGE_ROWS", PAGE_ROWS)
        site = build.build_site(engine, folder / "site").parent
    engine.dispose()
    with serve(site) as origin:
        yield origin


def test_landing_page_summarizes_and_links_every_method(large, watched):
    page = watched.page
    page.goto(f"{large}/index.html", timeout=LOAD_MS)
    families = page.locator("table.families")
    assert families.is_visible() and families.locator("tbody tr").count() == 2  # depth and width
    assert sum(int(t) for t in families.locator("tbody td:nth-child(2)").all_inner_texts()) == METHODS
    assert page.locator("ul.methods").count() == 0
    page.locator("a", has_text=f"All {METHODS} methods").click()
    page.wait_for_url("**/methods.html", timeout=LOAD_MS)
    assert page.locator("ul.methods li").count() == min(METHODS, PAGE_ROWS)
    page.locator("ul.methods a").first.click()
    page.wait_for_url("**/methods/method-00000.html", timeout=LOAD_MS)
    assert page.locator("h1").inner_text() == "Method 00000"
    watched.assert_clean(large)


def test_the_group_list_filters_and_a_group_opens_page_by_page(large, watched):
    page = watched.page
    page.goto(f"{large}/measured.html", timeout=LOAD_MS)
    entries = page.locator("ul.toc li[data-phase]")
    assert entries.count() == 50 and page.locator("section.group").count() == 0
    assert page.locator("form#scenario").is_visible()
    page.select_option("select[name=phase]", "")
    page.select_option("select[name=batch]", "")
    page.select_option("select[name=device]", "NVIDIA A100")
    shown = page.locator("ul.toc li[data-phase]:not([hidden])")
    assert shown.count() == 10
    assert set(shown.evaluate_all("els => els.map(e => e.dataset.device)")) == {"NVIDIA A100"}
    assert "(10 of 50 groups)" in page.locator("h2#results").inner_text()

    shown.first.locator("a").click()
    page.wait_for_load_state("load", timeout=LOAD_MS)
    assert "/groups/" in page.url and "nvidia-a100" in page.url
    assert page.locator("section#group svg.pareto").is_visible()
    assert page.locator("section#group svg.realization").is_visible()
    assert page.locator("section#group table.rows tbody tr").count() == PAGE_ROWS
    assert "Rows 1–100 of 240" in page.locator("nav.pages").inner_text()
    page.locator("nav.pages a", has_text="3").click()
    page.wait_for_load_state("load", timeout=LOAD_MS)
    assert page.url.endswith("-3.html")
    assert page.locator("table.rows tbody tr").count() == 40 and page.locator("svg").count() == 0
    page.locator("a", has_text="on its first page").click()
    page.wait_for_load_state("load", timeout=LOAD_MS)
    assert page.locator("section#group svg.pareto").is_visible()
    watched.assert_clean(large)


def test_a_group_page_sorts_and_reads_without_script(large, watched, browser):
    page = watched.page
    page.goto(f"{large}/measured.html", timeout=LOAD_MS)
    href = page.locator("ul.toc li[data-phase] a").first.get_attribute("href")
    page.goto(f"{large}/{href}", timeout=LOAD_MS)
    table = page.locator("section#group table.rows")
    header = table.locator("thead th", has_text="Realization").first
    header.click()
    values = [float(v) for v in table.locator("tbody tr td:nth-child(7)").evaluate_all(
        "els => els.map(e => e.dataset.sort)")]  # fmt: skip
    assert len(values) == PAGE_ROWS and values == sorted(values)
    watched.assert_clean(large)

    context = browser.new_context(java_script_enabled=False)
    try:
        plain = context.new_page()
        plain.goto(f"{large}/{href}", timeout=LOAD_MS)
        assert plain.locator("section#group svg.pareto").is_visible()
        assert plain.locator("section#group table.rows tbody tr:visible").count() == PAGE_ROWS
        plain.goto(f"{large}/measured.html", timeout=LOAD_MS)
        assert not plain.locator("form#scenario").is_visible()
        assert plain.locator("ul.toc li[data-phase]:visible").count() == 50
    finally:
        context.close()
