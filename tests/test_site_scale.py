"""The site of a large registry: group pages split into pages of bounded size, thinned charts, and incremental
rebuilds that write exactly what a full build writes, rendering only what changed.

The thresholds (rows per page, rows shown on measured.html, methods listed on the landing page, points per
chart) are lowered for these tests, so that a registry of a few hundred rows takes the large-registry layout.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from factories import make_environment, make_result, make_submission
from pages import check_html5

from prunereg.leaderboard import build, incremental
from prunereg.leaderboard.build import MANIFEST, build_site
from prunereg.registry.ingest import ingest
from prunereg.registry.pareto import Axes, pareto_front
from prunereg.registry.runs import retire


@pytest.fixture
def small_limits(monkeypatch):
    monkeypatch.setattr(build, "PAGE_ROWS", 4)
    monkeypatch.setattr(build, "INLINE_ROWS", 10)
    monkeypatch.setattr(build, "METHODS_INLINE", 3)
    monkeypatch.setattr(build, "DRAWN", 5)


def add_method(engine, i: int, device: str = "NVIDIA H200") -> None:
    adapter = "layer_drop" if i % 2 == 0 else "width"
    sub = make_submission(f"method-{i:03d}", adapter=adapter, claims=[])
    names = [p.name for p in sub.adapter.operating_points]
    speedups = {n: 1.1 + 0.3 * k + 0.01 * i for k, n in enumerate(names)}
    losses = {n: 0.02 + 0.1 * k + 0.003 * (i % 5) for k, n in enumerate(names)}
    environment = make_environment(device_name=device)
    ingest(engine, sub, make_result(sub, speedups=speedups, losses=losses, environment=environment))


@pytest.fixture
def registry(engine):
    for i in range(6):  # 6 methods x 2 points x 2 scenarios: two groups of 12 rows
        add_method(engine, i)
    add_method(engine, 6, device="NVIDIA A100")  # two groups of 2 rows on another device
    return engine


def files(site: Path) -> dict[str, bytes]:
    return {p.relative_to(site).as_posix(): p.read_bytes() for p in sorted(site.rglob("*")) if p.is_file()}


def test_large_layout_splits_groups_into_pages_and_lists_them(registry, tmp_path, small_limits):
    site = build_site(registry, tmp_path / "site").parent
    measured = (site / "measured.html").read_text()
    assert 'class="group"' not in measured and "<svg" not in measured  # a list, not every group
    links = re.findall(r'<a href="groups/([^"]+)\.html">', measured)
    assert len(links) == 4
    first = next(link for link in links if "nvidia-h200" in link)
    pages = sorted((site / "groups").glob(f"{first}*.html"))
    assert [p.name for p in pages] == [f"{first}-2.html", f"{first}-3.html", f"{first}.html"]  # 12 rows, 4 a page
    for page in pages:
        check_html5(page)
        assert page.read_text().count('<tr data-method="') == 4
    one = (site / "groups" / f"{first}.html").read_text()
    assert 'class="pareto"' in one and 'class="bands' in one and 'aria-current="page">1<' in one
    later = (site / "groups" / f"{first}-2.html").read_text()
    assert "<svg" not in later and f'href="{first}.html">on its first page</a>' in later
    data = json.loads((site / "data" / "groups" / f"{first}.json").read_text())
    assert len(data["rows"]) == 12 and data["group"]["device_name"] == "NVIDIA H200"
    listing = json.loads((site / "data" / "leaderboard.json").read_text())
    assert sum(g["rows"] for g in listing["groups"]) == 28 and "rows" not in listing
    index = (site / "index.html").read_text()
    assert 'class="families sortable"' in index and 'href="methods.html"' in index and 'class="methods"' not in index
    assert 'href="methods-2.html"' in (site / "methods.html").read_text() and not (site / "methods-3.html").exists()


def test_a_chart_of_many_points_draws_the_front_and_says_how_many_it_left_out(registry, tmp_path, small_limits):
    site = build_site(registry, tmp_path / "site").parent
    measured = (site / "measured.html").read_text()
    first = next(link for link in re.findall(r'<a href="groups/([^"]+)\.html">', measured) if "h200" in link)
    page = (site / "groups" / f"{first}.html").read_text()
    (svg,) = re.findall(r'<svg[^>]*class="pareto".*?</svg>', page, re.S)
    drawn = re.findall(r"<title>(Method \d+ · [^<:]+)", svg)
    rows = json.loads((site / "data" / "groups" / f"{first}.json").read_text())["rows"]
    front = {f"{r['method_name']} · {r['operating_point']}" for r in rows if r["pareto"]}
    assert front and front <= set(drawn) and len(set(drawn)) < len(rows)
    assert f"{len(rows) - len(set(drawn))} of its points fall within a pixel of a drawn point" in page


def test_drawn_points_keep_the_front(monkeypatch):
    monkeypatch.setattr(build, "DRAWN", 50)
    points = [Axes(1 + (i % 17) / 10, (i % 13) / 20) for i in range(400)]
    front = {points[i] for i, on in enumerate(pareto_front(points)) if on}
    kept = build._drawn(points, lambda p: p.quality_loss, lambda p: p.speedup, set())
    with_front = build._drawn(
        points, lambda p: p.quality_loss, lambda p: p.speedup, {i for i, p in enumerate(points) if p in front}
    )
    assert len(kept) <= 50 and len(with_front) < len(points)
    assert {p for p, on in zip(with_front, pareto_front(with_front)) if on} == front  # the same front, drawn whole


def test_an_incremental_rebuild_writes_what_a_full_build_writes_and_renders_only_what_changed(
    registry, tmp_path, small_limits, monkeypatch
):
    site = tmp_path / "site"
    build_site(registry, site)
    before = {p: p.stat().st_mtime_ns for p in site.rglob("*.html")}
    add_method(registry, 7, device="NVIDIA A100")  # into the two small groups only
    written: list[str] = []
    record = incremental.SiteWriter.record
    monkeypatch.setattr(
        incremental.SiteWriter, "record", lambda self, unit, *a: written.append(unit) or record(self, unit, *a)
    )
    build_site(registry, site)
    assert {u.split()[0] for u in written if " " in u} == {"group", "method", "methods"}
    assert sorted(u for u in written if u.startswith("group")) == sorted(
        f"group {build._slug(k)}" for _, k, members, _ in build._group_entries(build.leaderboard_rows(registry))
        if k.device_name == "NVIDIA A100"
    )  # fmt: skip
    assert [u for u in written if u.startswith("method ")] == ["method method-007"]
    untouched = [p for p in before if "nvidia-h200" in p.name]
    assert untouched and all(p.stat().st_mtime_ns == before[p] for p in untouched)

    fresh = build_site(registry, tmp_path / "fresh", full=True).parent
    rebuilt, full = files(site), files(fresh)
    assert json.loads(rebuilt.pop(MANIFEST)) == json.loads(full.pop(MANIFEST))
    assert rebuilt.keys() == full.keys()
    assert [name for name in full if rebuilt[name] != full[name]] == []


def rebuilt_units(registry, site: Path, monkeypatch) -> list[str]:
    """The units an incremental rebuild renders; the folder it leaves must be what a full build writes."""
    written: list[str] = []
    record = incremental.SiteWriter.record

    def recorded(self, unit: str, *rest) -> None:
        written.append(unit)
        record(self, unit, *rest)

    with monkeypatch.context() as patched:
        patched.setattr(incremental.SiteWriter, "record", recorded)
        build_site(registry, site)
    fresh = build_site(registry, site.parent / f"fresh-{len(list(site.parent.iterdir()))}", full=True).parent
    rebuilt, full = files(site), files(fresh)
    assert json.loads(rebuilt.pop(MANIFEST)) == json.loads(full.pop(MANIFEST))
    assert rebuilt.keys() == full.keys() and [n for n in full if rebuilt[n] != full[n]] == []
    return sorted(u for u in written if u.split()[0] in ("group", "method"))


def a100_groups(registry) -> list[str]:
    rows = build.leaderboard_rows(registry)
    return sorted(f"group {build._slug(k)}" for k in {r.group for r in rows if r.device_name == "NVIDIA A100"})


def test_retiring_a_run_renders_its_groups_and_method_again(registry, tmp_path, small_limits, monkeypatch):
    site = tmp_path / "site"
    build_site(registry, site)
    run = min(r.run_id for r in build.leaderboard_rows(registry) if r.method_slug == "method-006")  # one of two
    groups = a100_groups(registry)
    retire(registry, run, "timed on a throttled card")
    assert rebuilt_units(registry, site, monkeypatch) == [*groups, "method method-006"]


def test_a_new_version_that_renames_a_method_renders_its_groups_and_page_again(
    registry, tmp_path, small_limits, monkeypatch
):
    site = tmp_path / "site"
    build_site(registry, site)
    renamed = make_submission("method-006", adapter="layer_drop", name="Method Six", claims=[])
    ingest(registry, renamed)  # a new version, no new runs: only the name its rows carry changes
    assert rebuilt_units(registry, site, monkeypatch) == [*a100_groups(registry), "method method-006"]
    page = (site / "groups" / f"{a100_groups(registry)[0].split()[1]}.html").read_text()
    assert "Method Six" in page


def test_a_point_that_takes_the_front_renders_the_pages_of_the_methods_it_pushes_off(
    registry, tmp_path, small_limits, monkeypatch
):
    site = tmp_path / "site"
    build_site(registry, site)
    on_front = {r.method_slug for r in build.leaderboard_rows(registry) if r.device_name == "NVIDIA A100" and r.pareto}
    sub = make_submission("method-099", adapter="width", claims=[])
    names = [p.name for p in sub.adapter.operating_points]
    best = make_result(sub, speedups=dict.fromkeys(names, 9.0), losses=dict.fromkeys(names, 0.0),
                       environment=make_environment(device_name="NVIDIA A100"))  # fmt: skip
    ingest(registry, sub, best)  # dominates every other A100 point
    assert on_front == {"method-006"}
    assert rebuilt_units(registry, site, monkeypatch) == [
        *a100_groups(registry),
        "method method-006",
        "method method-099",
    ]


def test_another_prunereg_or_a_damaged_manifest_gives_a_full_build(registry, tmp_path, small_limits, monkeypatch):
    site = tmp_path / "site"
    build_site(registry, site)
    manifest = json.loads((site / MANIFEST).read_text())
    with monkeypatch.context() as patched:
        patched.setattr(incremental, "code_digest", lambda: "another prunereg")
        assert incremental.earlier_units(site, "measured") is None
    assert (
        incremental.earlier_units(site, "theoretical") is None
        and incremental.earlier_units(site, "measured") == manifest["units"]
    )
    (site / MANIFEST).write_text("{not json")
    assert incremental.earlier_units(site, "measured") is None
    (site / "stray.html").write_text("not ours")
    build_site(registry, site)  # a full build replaces the folder whole
    assert not (site / "stray.html").exists() and json.loads((site / MANIFEST).read_text())["units"]


def test_pages_rendered_by_forked_processes_are_the_pages_one_process_renders(
    registry, tmp_path, small_limits, monkeypatch
):
    serial = files(build_site(registry, tmp_path / "serial").parent)
    monkeypatch.setattr(incremental, "PARALLEL_UNITS", 1)
    monkeypatch.setattr(incremental.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)  # two CPUs, even on one
    shared = files(build_site(registry, tmp_path / "shared").parent)
    assert json.loads(serial.pop(MANIFEST)) == json.loads(shared.pop(MANIFEST))
    assert serial == shared


def test_the_command_rebuilds_only_what_changed_unless_told_full(registry, tmp_db, tmp_path):
    from typer.testing import CliRunner

    from prunereg.cli import app

    site = tmp_path / "site"
    command = ["leaderboard", "build", "--out", str(site), "--db", tmp_db, "--submissions", str(tmp_path / "none")]
    assert CliRunner().invoke(app, command).exit_code == 0
    page = site / "methods" / "method-000.html"
    first = page.stat().st_mtime_ns
    assert CliRunner().invoke(app, command).exit_code == 0
    assert page.stat().st_mtime_ns == first  # nothing changed: the page was kept
    result = CliRunner().invoke(app, [*command, "--full"])
    assert result.exit_code == 0, result.output
    assert page.stat().st_mtime_ns != first and (site / MANIFEST).is_file()
