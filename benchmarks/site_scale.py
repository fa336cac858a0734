"""The leaderboard site at 10k, 100k and 1M latency measurements: full build, incremental rebuild, memory, size.

The registry grows by method count, as a community leaderboard does, on fixed devices and scenarios:
M methods (layer drop and width, alternating) x 4 operating points x 5 devices x 10 scenarios (prefill
and decode at batch 1, 4, 8, 16, 32) = 200 M rows in 50 comparable groups, every point with a measured
quality. Two template methods are stored through the ingest API with the test suite's factories
(tests/factories.py); the others are copies of their rows with other slugs, speedups and losses, written
with SQLAlchemy Core bulk inserts (ingesting a million rows one submission at a time takes hours).
Each build runs in its own process, so its peak resident memory (getrusage maxrss) is its own. After the
full build, one new submission (one method, one device: 40 rows in 10 groups) is ingested through the
ingest API and the site is rebuilt into the same folder: the incremental rebuild.

    .venv/bin/python benchmarks/site_scale.py > benchmarks/site_scale.md             # 10k and 100k
    .venv/bin/python benchmarks/site_scale.py 10000 100000 1000000 > benchmarks/site_scale.md

Exit code 1 when a 100k figure misses issue 16's targets (full build 20 s, incremental rebuild 3 s,
largest page 2 MB, peak memory 1 GB).
"""

from __future__ import annotations

import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from factories import make_environment, make_result, make_submission  # noqa: E402
from sqlalchemy import Engine, MetaData, func, select  # noqa: E402

from prunereg.registry.db import connect  # noqa: E402
from prunereg.registry.ingest import ingest  # noqa: E402
from prunereg.spec.catalog import Phase, Scenario  # noqa: E402

DEVICES = [("NVIDIA H200", "h200"), ("NVIDIA A100", "a100"), ("NVIDIA RTX PRO 6000", "rtx-pro-6000"),
           ("NVIDIA H200 (2nd host)", "h200"), ("generic CPU", "cpu-generic")]  # fmt: skip
SCENARIOS = tuple(
    Scenario(phase=phase, batch_size=b, seq_len=1024)
    for phase in (Phase.prefill, Phase.decode)
    for b in (1, 4, 8, 16, 32)
)
ROWS_PER_METHOD = 4 * len(DEVICES) * len(SCENARIOS)
TARGETS = {"full_s": 20.0, "incremental_s": 3.0, "largest_page_bytes": 2_000_000, "peak_rss_bytes": 1_000_000_000}
"""Issue 16's targets at 100,000 measurements."""


def points(adapter: str, i: int) -> dict[str, dict]:
    fractions = [0.1 + 0.1 * k + 0.01 * (i % 7) for k in range(4)]
    if adapter == "layer_drop":
        return {f"drop-{k}": {"sparsity": round(f, 3), "seed": 0} for k, f in enumerate(fractions)}
    return {  # attention heads go in whole KV groups (a quarter of prunereg-mini's four), channels in any share
        f"width-{k}": {"attention_sparsity": 0.25 * (1 + k // 2), "mlp_sparsity": round(f, 3)}
        for k, f in enumerate(fractions)
    }


def speedup(i: int, d: int, k: int) -> float:
    return 1.05 + 0.25 * k + 0.013 * ((i * 7 + d) % 11) + 0.0001 * (i % 97)


def loss(i: int, d: int, k: int) -> float:
    return 0.01 + 0.04 * k + 0.003 * ((i * 5 + d) % 13) + 0.00007 * (i % 89)


def ingest_method(engine: Engine, i: int, devices: list[int]) -> None:
    """Method i through the ingest API: one submission, one result per device."""
    adapter = "layer_drop" if i % 2 == 0 else "width"
    sub = make_submission(f"method-{i:05d}", adapter=adapter, points=points(adapter, i), claims=[])
    names = [p.name for p in sub.adapter.operating_points]
    for d in devices:
        device_name, profile = DEVICES[d]
        result = make_result(
            sub, speedups={n: speedup(i, d, k) for k, n in enumerate(names)},
            losses={n: loss(i, d, k) for k, n in enumerate(names)}, scenarios=SCENARIOS,
            environment=make_environment(device_name=device_name, device_profile=profile),
        )  # fmt: skip
        ingest(engine, sub, result)


def fill(engine: Engine, methods: int) -> None:
    """Methods 0 and 1 through ingest(); every other method a copy of one of them, with its own numbers."""
    for i in range(min(methods, 2)):
        ingest_method(engine, i, list(range(len(DEVICES))))
    meta = MetaData()
    meta.reflect(engine)
    t = meta.tables
    with engine.begin() as conn:
        template = {name: [dict(r._mapping) for r in conn.execute(select(t[name]).order_by(t[name].c.id))]
                    for name in ("methods", "submissions", "operating_points", "runs", "latency_measurements",
                                 "quality_results")}  # fmt: skip
        next_id = {name: 1 + max((r["id"] for r in rows), default=0) for name, rows in template.items()}
        devices = {name: d for d, (name, _) in enumerate(DEVICES)}
        batch: dict[str, list[dict]] = {name: [] for name in template}

        def add(name: str, row: dict) -> int:
            row["id"] = next_id[name]
            next_id[name] += 1
            batch[name].append(row)
            return row["id"]

        def flush() -> None:
            for name, rows in batch.items():
                if rows:
                    conn.execute(t[name].insert(), rows)
                    rows.clear()

        for i in range(2, methods):
            source = template["methods"][i % 2]
            slug = f"method-{i:05d}"
            method_id = add("methods", {**source, "slug": slug, "name": f"Method {i:05d}"})
            for sub in (s for s in template["submissions"] if s["method_id"] == source["id"]):
                spec_hash = f"{i:064x}"
                spec = sub["spec"].replace(f"method-{i % 2:05d}", slug)
                sub_id = add("submissions", {**sub, "method_id": method_id, "spec_hash": spec_hash, "spec": spec})
                for point in (p for p in template["operating_points"] if p["submission_id"] == sub["id"]):
                    k = int(point["name"].rsplit("-", 1)[1])
                    point_id = add("operating_points", {**point, "submission_id": sub_id})
                    for run in (r for r in template["runs"] if r["operating_point_id"] == point["id"]):
                        d = devices[run["device_name"]]
                        run_id = add("runs", {**run, "operating_point_id": point_id, "spec_hash": spec_hash})
                        s = speedup(i, d, k)
                        for lat in (x for x in template["latency_measurements"] if x["run_id"] == run["id"]):
                            add("latency_measurements", _rescaled(lat, s) | {"run_id": run_id})
                        for q in (x for x in template["quality_results"] if x["run_id"] == run["id"]):
                            lost = loss(i, d, k)
                            value = (
                                q["dense_value"] * (1 - lost)
                                if q["higher_is_better"]
                                else q["dense_value"] * (1 + lost)
                            )
                            add("quality_results", {**q, "operating_point_id": point_id, "run_id": run_id,
                                                    "value": value, "relative_loss": lost})  # fmt: skip
            if i % 200 == 0:
                flush()
        flush()


def _rescaled(lat: dict, speedup: float) -> dict:
    """A template latency row timed at another speedup: pruned samples, percentiles and the speedup's interval
    scaled together, so the copy is exactly as noisy (and as rankable) as the row ingested through the API."""
    median = lat["dense_median"] / speedup
    scale = median / lat["median"]
    rescaled = {**lat, "median": median, "p20": lat["p20"] * scale, "p80": lat["p80"] * scale,
                "samples": [v * scale for v in lat["samples"]]}  # fmt: skip
    if lat.get("speedup_low") is not None:
        rescaled["speedup_low"] = lat["speedup_low"] / scale
        rescaled["speedup_high"] = lat["speedup_high"] / scale
    return rescaled


def build(db: str, out: str) -> dict:
    """One build in this process: seconds and peak resident memory."""
    from prunereg.leaderboard.build import build_site

    engine = connect(f"sqlite:///{db}")
    start = time.perf_counter()
    build_site(engine, Path(out))
    seconds = time.perf_counter() - start
    largest = max(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return {"seconds": seconds, "peak_rss_bytes": largest * 1024}  # the build's largest process (it forks renderers)


def build_in_subprocess(db: Path, out: Path, timeout: float) -> dict:
    code = f"import json, sys; sys.path.insert(0, {str(ROOT / 'benchmarks')!r}); import site_scale; " \
           f"print(json.dumps(site_scale.build({str(db)!r}, {str(out)!r})))"  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def site_size(site: Path) -> dict:
    files = [p for p in site.rglob("*") if p.is_file()]
    html = [p for p in files if p.suffix == ".html"]
    largest = max(html, key=lambda p: p.stat().st_size)
    return {
        "files": len(files), "pages": len(html), "bytes": sum(p.stat().st_size for p in files),
        "largest_page": largest.relative_to(site).as_posix(), "largest_page_bytes": largest.stat().st_size,
        "index_bytes": (site / "index.html").stat().st_size,
    }  # fmt: skip


def measure(rows: int, folder: Path, timeout: float) -> dict:
    methods = rows // ROWS_PER_METHOD
    db = folder / f"registry-{rows}.db"
    engine = connect(f"sqlite:///{db}")
    start = time.perf_counter()
    fill(engine, methods)
    filled = time.perf_counter() - start
    with engine.connect() as conn:
        stored = conn.execute(select(func.count()).select_from(_latency(engine))).scalar()
    site = folder / f"site-{rows}"
    load = os.getloadavg()[0]
    full = build_in_subprocess(db, site, timeout) | {"load": load}
    size = site_size(site)
    start = time.perf_counter()
    ingest_method(engine, methods, [0])  # one new submission: one method, one device
    ingested = time.perf_counter() - start
    engine.dispose()
    load = os.getloadavg()[0]
    again = build_in_subprocess(db, site, timeout) | {"load": load}
    return {"rows": stored, "methods": methods, "fill_s": filled, "full": full, "size": size,
            "ingest_s": ingested, "incremental": again, "size_after": site_size(site)}  # fmt: skip


def _latency(engine: Engine):
    meta = MetaData()
    meta.reflect(engine, only=["latency_measurements"])
    return meta.tables["latency_measurements"]


def mb(n: float) -> str:
    return f"{n / 1e6:,.1f} MB"


def report(results: list[dict], missing: list[str]) -> str:
    lines = [
        "# The leaderboard site at scale (benchmarks/site_scale.py)",
        "",
        f"SQLite file registry; python {platform.python_version()}, {platform.machine()}, "
        f"{os.cpu_count()} cores, shared with other work while measured (the load column: the 1-minute load average "
        "as each build started; above the core count, builds wait for a core). "
        "One build per process, which forks a renderer per core for many pages; peak memory is the largest maxrss "
        "among the build's processes. Incremental: after ingesting one new submission (one method on one "
        "device: 40 rows in 10 of the 50 groups) into the built registry, the same --out folder rebuilt.",
        "",
        "| measurements | methods | full build | incremental rebuild | load (full / incr.) | peak memory (full / incr.) "
        "| site size | pages | largest page | index.html |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in results:
        s = r["size"]
        lines.append(
            f"| {r['rows']:,} | {r['methods']:,} | {r['full']['seconds']:.1f} s | {r['incremental']['seconds']:.2f} s | "
            f"{r['full']['load']:.1f} / {r['incremental']['load']:.1f} | "
            f"{mb(r['full']['peak_rss_bytes'])} / {mb(r['incremental']['peak_rss_bytes'])} | {mb(s['bytes'])} | "
            f"{s['pages']:,} | {s['largest_page']} ({mb(s['largest_page_bytes'])}) | {s['index_bytes'] / 1e3:,.0f} kB |"
        )
    lines += ["", "Filling the registry (not part of any build): " + ", ".join(
        f"{r['rows']:,} rows in {r['fill_s']:.0f} s" for r in results) + "."]  # fmt: skip
    for note in missing:
        lines += ["", note]
    lines += ["", "Issue 16's targets at 100,000: full build ≤ 20 s, incremental ≤ 3 s, largest page ≤ 2 MB, "
              "peak memory ≤ 1 GB."]  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    sizes = [int(a) for a in argv] or [10_000, 100_000]
    results, missing = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for rows in sizes:
            try:
                results.append(measure(rows, Path(tmp), timeout=1800))
            except (subprocess.TimeoutExpired, RuntimeError) as error:
                why = re.sub(r"\s+", " ", str(error))[-300:]
                missing.append(f"{rows:,} measurements: no figure ({type(error).__name__}: {why})")
            print(json.dumps(results[-1] if results else {}), file=sys.stderr, flush=True)
    print(report(results, missing), end="")
    at_100k = [r for r in results if r["rows"] // 1000 == 100]
    misses = [
        k for r in at_100k for k, limit in TARGETS.items()
        if (r["full"]["seconds"] if k == "full_s" else r["incremental"]["seconds"] if k == "incremental_s"
            else r["size"]["largest_page_bytes"] if k == "largest_page_bytes" else r["full"]["peak_rss_bytes"]) > limit
    ]  # fmt: skip
    return 1 if misses or missing else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
