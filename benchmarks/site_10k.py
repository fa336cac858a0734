"""Build the leaderboard site from a registry of 10,000 latency measurements and time it.

50 methods (layer drop and width, alternating) x 4 operating points x 5 devices x 10 scenarios
(prefill and decode at batch 1, 4, 8, 16, 32) = 10,000 rows in 50 comparable groups, stored through
the ingest API with the test suite's factories (tests/factories.py). Every point has a measured
quality, so every group gets a Pareto plot, a realization chart and transition bands.

    .venv/bin/python benchmarks/site_10k.py > benchmarks/site_10k.txt

The build must take under 10 s (the issue's budget); exit code 1 otherwise.
"""

from __future__ import annotations

import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from factories import make_environment, make_result, make_submission  # noqa: E402

from prunereg.leaderboard.build import build_site  # noqa: E402
from prunereg.registry.db import connect  # noqa: E402
from prunereg.registry.ingest import ingest  # noqa: E402
from prunereg.registry.queries import leaderboard_rows  # noqa: E402
from prunereg.spec.catalog import Phase, Scenario  # noqa: E402

METHODS = 50
DEVICES = [("NVIDIA H200", "h200"), ("NVIDIA A100", "a100"), ("NVIDIA RTX PRO 6000", "rtx-pro-6000"),
           ("NVIDIA H200 (2nd host)", "h200"), ("generic CPU", "cpu-generic")]  # fmt: skip
SCENARIOS = tuple(
    Scenario(phase=phase, batch_size=b, seq_len=1024)
    for phase in (Phase.prefill, Phase.decode)
    for b in (1, 4, 8, 16, 32)
)
BUDGET_S = 10.0


def points(adapter: str, i: int) -> dict[str, dict]:
    fractions = [0.1 + 0.1 * k + 0.01 * (i % 7) for k in range(4)]
    if adapter == "layer_drop":
        return {f"drop-{k}": {"sparsity": round(f, 3), "seed": 0} for k, f in enumerate(fractions)}
    return {
        f"width-{k}": {"attention_sparsity": round(f, 3), "mlp_sparsity": round(f, 3)} for k, f in enumerate(fractions)
    }


def fill(engine) -> None:
    for i in range(METHODS):
        adapter = "layer_drop" if i % 2 == 0 else "width"
        sub = make_submission(f"method-{i:03d}", adapter=adapter, points=points(adapter, i), claims=[])
        names = [p.name for p in sub.adapter.operating_points]
        for d, (device_name, profile) in enumerate(DEVICES):
            speedups = {n: 1.05 + 0.25 * k + 0.013 * ((i * 7 + d) % 11) for k, n in enumerate(names)}
            losses = {n: 0.01 + 0.04 * k + 0.003 * ((i * 5 + d) % 13) for k, n in enumerate(names)}
            result = make_result(
                sub, speedups=speedups, losses=losses, scenarios=SCENARIOS,
                environment=make_environment(device_name=device_name, device_profile=profile),
            )  # fmt: skip
            ingest(engine, sub, result)


def main() -> int:
    with tempfile.TemporaryDirectory() as folder:
        engine = connect(f"sqlite:///{Path(folder) / 'registry.db'}")
        start = time.perf_counter()
        fill(engine)
        filled = time.perf_counter() - start
        rows = leaderboard_rows(engine)
        start = time.perf_counter()
        index = build_site(engine, Path(folder) / "site")
        built = time.perf_counter() - start
        pages = len(list(index.parent.rglob("*.html")))
        size = sum(p.stat().st_size for p in index.parent.rglob("*") if p.is_file())
        groups = len({r.group for r in rows})
        engine.dispose()
    print(f"site_10k: {len(rows):,} latency measurements, {METHODS} methods, {groups} groups")
    print(f"registry filled through ingest() in {filled:.1f} s (not part of the budget)")
    print(f"build_site: {built:.2f} s ({pages} pages, {size / 1e6:.1f} MB), budget {BUDGET_S:.0f} s")
    print(f"python {platform.python_version()}, {platform.machine()}, SQLite file registry")
    return 0 if built < BUDGET_S and len(rows) == 10_000 else 1


if __name__ == "__main__":
    sys.exit(main())
