"""Registry: what ingestion stores, that it is idempotent and atomic, and where the database lives."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from factories import make_environment, make_result, make_submission
from sqlalchemy import func, inspect, select
from sqlalchemy.orm import Session

from prunereg.registry import ingest as ingest_module
from prunereg.registry.db import DEFAULT_DB, connect, resolve_url
from prunereg.registry.ingest import ingest
from prunereg.registry.queries import leaderboard_rows, method_detail, methods
from prunereg.registry.schema import Base, LatencyMeasurement, MethodRecord, QualityRecord, Run

TABLES = ["methods", "submissions", "operating_points", "runs", "latency_measurements", "quality_results"]


def counts(engine) -> dict[str, int]:
    with Session(engine) as session:
        return {t: session.scalars(select(func.count()).select_from(Base.metadata.tables[t])).one() for t in TABLES}


def test_connect_creates_the_paper_named_tables(engine):
    assert set(TABLES) <= set(inspect(engine).get_table_names())


def test_ingest_stores_expected_rows(engine):
    sub = make_submission()
    summary = ingest(engine, sub, make_result(sub))
    expected = {
        "methods": 1,
        "submissions": 1,
        "operating_points": 2,
        "runs": 2,
        "latency_measurements": 4,
        "quality_results": 3,  # one reported claim + one measured per point
    }
    assert counts(engine) == expected
    assert dict(summary.added) == expected
    with Session(engine) as session:
        method = session.scalars(select(MethodRecord)).one()
        assert (method.slug, method.family, method.arxiv) == ("shortgpt-test", "static_depth", "9999.00001")
        claim = session.scalars(select(QualityRecord).where(QualityRecord.run_id.is_(None))).one()
        assert (claim.provenance, claim.paper_table, claim.base_model) == ("reported", "Table 3", "llama-2-7b")
        assert claim.relative_loss == pytest.approx((18.0 - 6.0) / 6.0)
        run = session.scalars(select(Run).order_by(Run.id)).first()
        assert run.environment_key == make_environment().key()
        assert run.effects[0]["fraction"] == 0.25
        lat = session.scalars(select(LatencyMeasurement).order_by(LatencyMeasurement.id)).first()
        assert (lat.scenario, lat.phase, lat.batch_size, lat.seq_len) == ("prefill-b1-s256", "prefill", 1, 256)
        assert lat.dense_median / lat.median == pytest.approx(1.2)


def test_ingest_submission_without_result(engine):
    ingest(engine, make_submission(claims=[]))
    assert counts(engine) == dict(zip(TABLES, [1, 1, 2, 0, 0, 0]))


def test_ingest_twice_adds_nothing(engine):
    sub = make_submission()
    result = make_result(sub)
    ingest(engine, sub, result)
    before = counts(engine)
    again = ingest(engine, sub, result)
    assert counts(engine) == before
    assert not again.changed
    assert sum(again.existing.values()) == sum(before.values())


def test_reevaluation_in_same_environment_keeps_both_measurements(engine):
    """Another measurement of the same point and environment is another run: neither silently wins."""
    sub = make_submission()
    ingest(engine, sub, make_result(sub))
    before = counts(engine)
    ingest(engine, sub, make_result(sub, speedups={"drop-25": 9.0, "drop-50": 9.0}))
    assert counts(engine)["runs"] == 2 * before["runs"]
    assert {round(r.speedup, 6) for r in leaderboard_rows(engine)} == {1.2, 1.6, 9.0}


def test_results_never_rewrite_a_method(engine):
    ingest(engine, make_submission(name="Registered Name"))
    renamed = make_submission(name="Hijacked Name", authors=["Mallory"])
    ingest(engine, renamed, make_result(renamed), update_method=False)
    assert [(m.name, m.authors) for m in methods(engine)] == [("Registered Name", ["Ada Example", "Bo Test"])]


def test_new_environment_adds_runs_not_methods(engine):
    sub = make_submission()
    ingest(engine, sub, make_result(sub))
    ingest(engine, sub, make_result(sub, environment=make_environment(torch="2.12.0")))
    c = counts(engine)
    assert (c["methods"], c["submissions"], c["runs"], c["latency_measurements"]) == (1, 1, 4, 8)


def test_new_submission_version_updates_method_identity(engine):
    ingest(engine, make_submission(name="Old Name"))
    ingest(engine, make_submission(name="New Name"))
    c = counts(engine)
    assert (c["methods"], c["submissions"]) == (1, 2)
    assert [m.name for m in methods(engine)] == ["New Name"]
    assert len(method_detail(engine, "shortgpt-test").submissions) == 2


def test_failure_mid_ingestion_writes_nothing(engine, monkeypatch):
    sub = make_submission()
    calls = []

    def fail_on_second_latency(session, run, latency, summary):
        calls.append(latency)
        if len(calls) == 2:
            raise RuntimeError("disk on fire")
        return original(session, run, latency, summary)

    original = ingest_module._store_latency
    monkeypatch.setattr(ingest_module, "_store_latency", fail_on_second_latency)
    with pytest.raises(RuntimeError, match="disk on fire"):
        ingest(engine, sub, make_result(sub))
    assert calls, "the failure must come after rows were written in the session"
    assert counts(engine) == dict.fromkeys(TABLES, 0)


def test_failure_leaves_earlier_ingestion_intact(engine, monkeypatch):
    first = make_submission("first-method")
    ingest(engine, first, make_result(first))
    before = counts(engine)
    second = make_submission("second-method")
    monkeypatch.setattr(ingest_module, "_store_measured_quality", lambda *a: (_ for _ in ()).throw(OSError("boom")))
    with pytest.raises(OSError):
        ingest(engine, second, make_result(second))
    assert counts(engine) == before


def test_result_for_another_spec_is_refused(engine):
    sub = make_submission()
    other = make_submission(description="a different spec, so a different hash")
    with pytest.raises(ValueError, match="result is for spec"):
        ingest(engine, sub, make_result(other))
    assert counts(engine) == dict.fromkeys(TABLES, 0)


def test_claim_on_unknown_point_is_refused(engine):
    claim = make_submission().quality_claims[0].model_dump(mode="json")
    sub = make_submission(claims=[{**claim, "operating_point": "drop-99"}])
    with pytest.raises(ValueError, match="drop-99"):
        ingest(engine, sub)


def test_resolve_url(monkeypatch, tmp_path):
    monkeypatch.delenv("PRUNEREG_DB", raising=False)
    assert resolve_url(None) == f"sqlite:///{DEFAULT_DB}"
    assert resolve_url(str(tmp_path / "r.db")) == f"sqlite:///{tmp_path}/r.db"
    assert resolve_url("postgresql+psycopg://u@host/prunereg") == "postgresql+psycopg://u@host/prunereg"
    monkeypatch.setenv("PRUNEREG_DB", "sqlite:////srv/shared.db")
    assert resolve_url(None) == "sqlite:////srv/shared.db"
    assert resolve_url("local.db") == "sqlite:///local.db"
    monkeypatch.setenv("PRUNEREG_DB", "")
    assert resolve_url(None) == f"sqlite:///{DEFAULT_DB}"


def test_connect_with_a_file_path_enables_foreign_keys(tmp_path):
    engine = connect(str(tmp_path / "fk.db"))
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    assert (tmp_path / "fk.db").exists()
    engine.dispose()


def _flags(rows, phase="prefill"):
    return {(r.method_slug, r.operating_point, r.device_name): r.pareto for r in rows if r.phase == phase}


def test_pareto_is_computed_per_group(engine):
    fast = make_submission("fast-method", points={"p": {"sparsity": 0.25, "seed": 0}}, claims=[])
    slow = make_submission("slow-method", points={"p": {"sparsity": 0.25, "seed": 0}}, claims=[])
    ingest(engine, fast, make_result(fast, speedups={"p": 2.0}, losses={"p": 0.01}))
    ingest(engine, slow, make_result(slow, speedups={"p": 1.2}, losses={"p": 0.10}))
    other_device = make_environment(device_name="NVIDIA A100")
    ingest(engine, slow, make_result(slow, speedups={"p": 1.2}, losses={"p": 0.10}, environment=other_device))
    assert _flags(leaderboard_rows(engine)) == {
        ("fast-method", "p", "NVIDIA H200"): True,
        ("slow-method", "p", "NVIDIA H200"): False,  # dominated on the same device
        ("slow-method", "p", "NVIDIA A100"): True,  # alone in its group
    }


def test_theoretical_speedup_can_move_the_front(engine):
    depth = make_submission("depth", points={"p": {"sparsity": 0.25, "seed": 0}}, claims=[])
    half = {"p": {"attention_sparsity": 0.5, "mlp_sparsity": 0.5}}
    width = make_submission("width", adapter="width", points=half, claims=[])
    ingest(engine, depth, make_result(depth, speedups={"p": 1.3}, theoretical={"p": 1.33}, losses={"p": 0.05}))
    ingest(engine, width, make_result(width, speedups={"p": 1.0}, theoretical={"p": 1.9}, losses={"p": 0.06}))
    measured = _flags(leaderboard_rows(engine, "measured"))
    theoretical = _flags(leaderboard_rows(engine, "theoretical"))
    assert measured == {("depth", "p", "NVIDIA H200"): True, ("width", "p", "NVIDIA H200"): False}
    assert theoretical == {("depth", "p", "NVIDIA H200"): True, ("width", "p", "NVIDIA H200"): True}
    width_row = next(r for r in leaderboard_rows(engine) if r.method_slug == "width")
    assert width_row.realization == pytest.approx(1.0 / 1.9)
    with pytest.raises(ValueError):
        leaderboard_rows(engine, "roofline")


def test_rows_without_quality_are_kept_but_never_on_the_front(engine):
    sub = make_submission(claims=[])
    ingest(engine, sub, make_result(sub, losses={"drop-25": 0.02}))
    rows = [r for r in leaderboard_rows(engine) if r.phase == "prefill"]
    assert [(r.operating_point, r.quality_loss is None, r.pareto) for r in rows] == [
        ("drop-25", False, True),
        ("drop-50", True, False),
    ]


def test_registry_and_leaderboard_never_import_torch():
    code = (
        "import sys, prunereg.registry.ingest, prunereg.registry.queries, prunereg.leaderboard.build; "
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers')); "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_rows_carry_the_kernels_of_the_models_gemms_and_the_note_names_the_unusual_ones(engine):
    from prunereg.leaderboard.display import kernel_note
    from prunereg.registry.queries import leaderboard_rows
    from prunereg.spec.results import EvaluationResult, GemmTrace

    submission = make_submission(points={"drop-25": {"sparsity": 0.25, "seed": 0}})
    document = make_result(submission).model_dump(mode="json")
    shape = {"count": 1, "m": 256, "n": 64, "k": 64, "flops": 2.0, "effective_flops": 1.0}
    document["points"][0]["gemms"] = [
        GemmTrace(gemm=gemm, kernel=kernel, **shape).model_dump()
        for gemm, kernel in (("qkv_proj", "dense"), ("down_proj", "masked dense"), ("router", "router kernel"))
    ]
    ingest(engine, submission, EvaluationResult.model_validate(document))
    assert {r.kernels for r in leaderboard_rows(engine)} == {("dense", "masked dense")}  # the router's is no GEMM's
    assert kernel_note(["dense", "causal (SDPA)"]) is None
    assert kernel_note(["dense", "masked dense"]) == "masked dense: no kernel speedup expected"
    sparse = ["sparse 2:4 (cuSPARSELt)", "block-sparse (flex_attention)", "dense"]
    assert kernel_note(sparse) == "block-sparse (flex_attention), sparse 2:4 (cuSPARSELt)"
    searched = [f"sparse 2:4 (cuSPARSELt, algorithm {i})" for i in (20, 13, 15, 13)] + ["dense"]
    assert kernel_note(searched) == "sparse 2:4 (cuSPARSELt, algorithms 13, 15, 20)"
    assert kernel_note(searched[1:2]) == "sparse 2:4 (cuSPARSELt, algorithm 13)"
    split = [
        *searched,
        "sparse 2:4 (cuSPARSELt, algorithm 13 split-K 4)",
        "sparse 2:4 (cuSPARSELt, algorithm 10 segment-K)",
    ]
    assert kernel_note(split) == "sparse 2:4 (cuSPARSELt, algorithms 10 segment-K, 13, 13 split-K 4, 15, 20)"


def test_rows_of_gpu_runs_name_their_unaligned_weight_gemms_and_the_site_shows_them(engine, tmp_path):
    """LLM-Pruner at 50 % keeps 6738 of Llama-3.1-8B's 14336 MLP channels: slower kernels than its FLOPs say.
    A float32 (CPU) run of the same shapes carries no such note."""
    from prunereg.leaderboard.build import build_site
    from prunereg.spec.results import EvaluationResult, GemmTrace

    submission = make_submission(points={"drop-25": {"sparsity": 0.25, "seed": 0}})
    shape = {"count": 32, "m": 256, "flops": 2.0, "effective_flops": 1.0, "kernel": "dense"}
    for dtype in ("bfloat16", "float32"):
        document = make_result(submission, environment=make_environment(dtype=dtype)).model_dump(mode="json")
        document["points"][0]["gemms"] = [
            GemmTrace(gemm="down_proj", n=4096, k=6738, **shape).model_dump(),
            GemmTrace(gemm="qkv_proj", n=6144, k=4096, **shape).model_dump(),
        ]
        ingest(engine, submission, EvaluationResult.model_validate(document))
    by_dtype = {(r.dtype, r.operating_point): r.unaligned for r in leaderboard_rows(engine)}
    assert by_dtype[("bfloat16", "drop-25")] == ("down_proj K = 6738",)
    assert by_dtype[("float32", "drop-25")] == ()
    build_site(engine, tmp_path / "site")
    pages = "".join(p.read_text(encoding="utf-8") for p in (tmp_path / "site").rglob("*.html"))
    assert pages.count("unaligned in bf16: down_proj K = 6738") >= 1


def test_cli_ingest_stores_all_files_or_none(engine, tmp_db, monkeypatch):
    """The database failing on the second file rolls the first one back too: one line, exit 1, nothing stored."""
    from sqlalchemy.exc import OperationalError
    from typer.testing import CliRunner

    from prunereg.cli import app

    root = Path(__file__).resolve().parents[1]
    files = [next((root / "results" / "h200-taxonomy").glob(f"{slug}--*.json")) for slug in ("dense", "shortgpt")]
    original = ingest_module._store_run

    def fail_on_second_file(session, point, result, point_result, summary):
        if summary.method == "shortgpt":
            raise OperationalError("INSERT INTO runs", {}, Exception("disk I/O error"))
        return original(session, point, result, point_result, summary)

    monkeypatch.setattr(ingest_module, "_store_run", fail_on_second_file)
    args = ["ingest", *map(str, files), "--db", tmp_db, "--submissions", str(root / "submissions")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: nothing stored: ") and "disk I/O error" in line
    assert counts(engine) == dict.fromkeys(TABLES, 0)
