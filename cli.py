"""The `prunereg` command line: one function per subcommand, examples in each help text.

Heavy modules (torch, transformers) are imported inside `evaluate` only, so `validate`,
`list` and `schema` answer in well under a second.
"""

from __future__ import annotations

import json
from collections import Counter
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from prunereg.spec.catalog import EMBEDDED_MODEL, devices, models, suites
from prunereg.spec.checks import CHECKS
from prunereg.spec.results import EXECUTION_MODES, SavedEvaluation
from prunereg.spec.submission import Submission, json_schema
from prunereg.spec.validate import SCHEMA_FILE, validate_file

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
                  help="Benchmark and registry for LLM pruning methods.")
leaderboard_app = typer.Typer(no_args_is_help=True, help="The static leaderboard site.")
app.add_typer(leaderboard_app, name="leaderboard")
console = Console(highlight=False)
errors = Console(stderr=True, highlight=False)

DbOption = Annotated[
    Optional[str],
    typer.Option("--db", envvar="PRUNEREG_DB", help="SQLite file or SQLAlchemy URL [default: prunereg.db]"),
]


def fail(message: str) -> typer.Exit:
    errors.print(Text(f"error: {message}"), soft_wrap=True)
    return typer.Exit(1)


def load_valid(files: list[Path]) -> list[Submission]:
    """Every submission, or exit 1 after printing one `FILE: /pointer: message` line per problem."""
    loaded, bad = [], False
    for path in files:
        submission, problems = validate_file(path)
        for problem in problems:
            errors.print(Text(f"{path}: {problem.pointer or '/'}: {problem.message}"), soft_wrap=True)
        bad = bad or bool(problems)
        if submission is not None:
            loaded.append(submission)
    if bad:
        raise typer.Exit(1)
    return loaded


@app.command()
def validate(files: Annotated[list[Path], typer.Argument(help="submission JSON files")]) -> None:
    """Check submissions against the schema and the semantic checks.

    Example: prunereg validate submissions/*.json
    """
    for submission, path in zip(load_valid(files), files):
        console.print(Text(f"{path}: ok ({submission.method.name}, {len(submission.adapter.operating_points)} operating points)"))


class Device(str, Enum):
    cpu = "cpu"
    cuda = "cuda"


Mode = Enum("Mode", {m: m for m in EXECUTION_MODES}, type=str)
DEFAULT_REPEATS = {"eager": 15, "graph": 50, "compiled": 50}
"""Replayed graphs are cheap to repeat, and more repeats steady the p20/p80 spread."""


@app.command()
def evaluate(
    submission: Annotated[Path, typer.Argument(help="submission JSON file")],
    model: Annotated[str, typer.Option(help="catalog model name or a local checkpoint folder")] = EMBEDDED_MODEL,
    device: Annotated[Device, typer.Option(help="where to measure")] = Device.cpu,
    scenarios: Annotated[str, typer.Option(help="scenario suite: " + ", ".join(suites()))] = "ci",
    mode: Annotated[
        Optional[Mode], typer.Option(help="execution mode (README, 'Execution modes') [default: graph on cuda, eager on cpu]")
    ] = None,
    repeats: Annotated[
        Optional[int], typer.Option(min=3, max=1000, help="timed repeats per scenario [default: 15 eager, 50 graph/compiled]")
    ] = None,
    warmup: Annotated[int, typer.Option(min=0, max=100, help="untimed repeats first")] = 3,
    point: Annotated[Optional[list[str]], typer.Option(help="measure only this operating point (repeatable)")] = None,
    save: Annotated[Optional[Path], typer.Option(help="also write the result as JSON into this folder")] = None,
    db: DbOption = None,
) -> None:
    """Apply a submission at each operating point, measure latency and quality, store the results.

    Example: prunereg evaluate submissions/shortgpt.json --model prunereg-mini --scenarios ci
    """
    (spec,) = load_valid([submission])
    execution = mode.value if mode else ("graph" if device is Device.cuda else "eager")
    repeats = repeats or DEFAULT_REPEATS[execution]
    if scenarios not in suites():
        raise fail(f"unknown scenario suite '{scenarios}' (known: {', '.join(suites())})")
    from rich.progress import Progress

    from prunereg.evaluate import EvaluationError, evaluate as run_evaluation
    from prunereg.registry.db import connect
    from prunereg.registry.ingest import ingest
    from prunereg.registry.queries import stored_points

    engine = connect(db)
    names = [scenario.name for scenario in suites()[scenarios]]
    added: Counter[str] = Counter()

    def stored(model_name: str, weights: str, env) -> set[str]:
        return stored_points(engine, spec.spec_hash(), model_name, weights, env.key(), names)

    def store(partial) -> None:
        added.update(ingest(engine, spec, partial).added)

    with Progress(console=errors, transient=True) as progress:
        task = progress.add_task(f"evaluating {spec.method.slug}", total=len(set(point or ()) or spec.adapter.operating_points) * (len(names) + 1))

        def on_step(label: str) -> None:
            progress.update(task, advance=1, description=f"{spec.method.slug} · {label}")

        try:
            result = run_evaluation(
                spec, model, device.value, suites()[scenarios], warmup, repeats, execution, set(point or ()),
                on_step, stored, store,
            )
        except EvaluationError as err:
            raise fail(str(err)) from None
    reused = [p.name for p in spec.adapter.operating_points if p.name not in {r.operating_point for r in result.points}]
    if reused:
        console.print(Text(f"already in the registry, not measured again: {', '.join(reused)}"))
    console.print(results_table(spec, result))
    console.print(Text("stored in the registry: " + (", ".join(f"{n} {t}" for t, n in added.items() if n) or "nothing new")))
    if save is not None:
        saved = SavedEvaluation(submission=spec, result=result)
        save.mkdir(parents=True, exist_ok=True)
        (save / saved.file_name()).write_text(saved.model_dump_json(indent=1) + "\n")
        console.print(Text(f"saved: {save / saved.file_name()}"))


@app.command("ingest")
def ingest_saved(
    files: Annotated[list[Path], typer.Argument(help="results written by `prunereg evaluate --save`")],
    db: DbOption = None,
) -> None:
    """Store saved evaluations (e.g. measured on a GPU machine) in the registry; idempotent.

    Example: prunereg ingest results/h200/*.json
    """
    from pydantic import ValidationError

    from prunereg.registry.db import connect
    from prunereg.registry.ingest import ingest

    loaded = []
    for path in files:
        try:
            saved = SavedEvaluation.model_validate_json(path.read_text(encoding="utf-8"))
        except (OSError, ValidationError) as err:
            raise fail(f"{path}: not a saved evaluation ({' '.join(str(err).split())[:200]})") from None
        for problem in (p for check in CHECKS for p in check(saved.submission)):
            raise fail(f"{path}: /submission{problem.pointer}: {problem.message}")
        loaded.append(saved)
    engine = connect(db)
    for path, saved in zip(files, loaded):
        try:
            console.print(Text(f"{path}: {ingest(engine, saved.submission, saved.result)}"))
        except ValueError as err:
            raise fail(f"{path}: {err}") from None


def results_table(spec: Submission, result) -> Table:
    env = result.environment
    table = Table(title=f"{spec.method.name} on {result.model} ({env.device_name}, {env.execution_mode} mode)")
    table.add_column("point", no_wrap=True)
    table.add_column("scenario", no_wrap=True)
    for column in ("ms", "dense ms", "speedup", "theory", "realized", "Δ quality", "params"):
        table.add_column(column, justify="right")
    for point in result.points:
        loss = f"{point.quality[0].relative_loss:+.1%}" if point.quality else "n/a"
        for lat in point.latency:
            table.add_row(
                Text(point.operating_point), lat.scenario.name, f"{lat.median:.2f}", f"{lat.dense_median:.2f}",
                f"{lat.speedup:.2f}x", f"{lat.theoretical_speedup:.2f}x", f"{lat.realization:.2f}", loss,
                f"{point.stats.parameters / 1e6:.2f}M",
            )
    fallbacks = {lat.fallback for point in result.points for lat in point.latency if lat.fallback}
    if fallbacks:
        table.caption = "timed in eager mode instead: " + "; ".join(sorted(fallbacks))
    return table


@app.command()
def prune(
    submission: Annotated[Path, typer.Argument(help="submission JSON file")],
    point: Annotated[str, typer.Option(help="operating point name")],
    out: Annotated[Path, typer.Option(help="folder for the checkpoint")],
    model: Annotated[str, typer.Option(help="catalog model name or a local checkpoint folder")] = EMBEDDED_MODEL,
) -> None:
    """Write the model pruned at one operating point as a plain transformers checkpoint.

    Example: prunereg prune submissions/shortgpt.json --point drop-25 --out pruned/shortgpt-25
    """
    (spec,) = load_valid([submission])
    names = [p.name for p in spec.adapter.operating_points]
    if point not in names:
        raise fail(f"no operating point '{point}' in {submission} (known: {', '.join(names)})")
    import torch

    from prunereg.adapters import get_adapter
    from prunereg.adapters.checkpoint import CheckpointRefused, save_pruned
    from prunereg.evaluate import EvaluationError, load_checked

    try:
        loaded = load_checked(spec, model, "cpu", torch.float32)
        adapter = get_adapter(spec.adapter.name)
        save_pruned(adapter, adapter.apply(loaded.model, spec.point(point).params), loaded.tokenizer, out)
    except (EvaluationError, CheckpointRefused) as err:
        raise fail(str(err)) from None
    console.print(Text(f"checkpoint written: {out}"))


@app.command()
def trace(
    submission: Annotated[Path, typer.Argument(help="submission JSON file")],
    point: Annotated[str, typer.Option(help="operating point name")],
    model: Annotated[str, typer.Option(help="catalog model name or a local checkpoint folder")] = EMBEDDED_MODEL,
    seq_len: Annotated[int, typer.Option(min=64, max=65536, help="prompt tokens of the traced prefill (batch 1), a multiple of 64")] = 128,
) -> None:
    """Trace the GEMMs the pruned model really runs in one prefill and check them against the declared effects.

    Example: prunereg trace submissions/llm-pruner.json --point width-50
    """
    (spec,) = load_valid([submission])
    names = [p.name for p in spec.adapter.operating_points]
    if point not in names:
        raise fail(f"no operating point '{point}' in {submission} (known: {', '.join(names)})")
    if seq_len % 64:
        raise fail(f"--seq-len {seq_len} is not a multiple of 64: block-sparse attention needs whole blocks")
    import copy

    import torch

    from prunereg.adapters import get_adapter
    from prunereg.adapters.trace import TOLERANCE, check_declaration
    from prunereg.evaluate import EvaluationError, load_checked
    from prunereg.spec.catalog import Phase, Scenario
    from prunereg.spec.effects import resolve

    try:
        loaded = load_checked(spec, model, "cpu", torch.float32)
    except EvaluationError as err:
        raise fail(str(err)) from None
    params = spec.point(point).params
    pruned = get_adapter(spec.adapter.name).apply(copy.deepcopy(loaded.model), params)
    scenario = Scenario(phase=Phase.prefill, batch_size=1, seq_len=seq_len)
    rows, mismatches = check_declaration(loaded.model, pruned, loaded.architecture, scenario, resolve(spec.effects, params))

    def si(flops: float) -> str:
        scale, unit = next(((s, u) for s, u in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")) if flops >= s), (1, ""))
        return f"{flops / scale:.3g}{unit}"

    def share(value: float | None) -> str:
        return "" if value is None else f"{value * 100:.3g} %"

    table = Table(title=Text(f"{spec.method.name} · {point} on {loaded.name}, one {scenario.name} forward"), box=None)
    for column in ("GEMM", "M×N×K", "count", "kernel", "dense\nFLOPs", "pruned\nFLOPs", "declared\nkept", "observed\nkept"):
        table.add_column(column, justify="left" if column in ("GEMM", "kernel") else "right", no_wrap=column != "kernel",
                         min_width=9 if column == "kernel" else None)
    for row in rows:
        mark = " ✗" if row.mismatch else ""
        for i, t in enumerate(row.pruned or (None,)):
            shape = (f"{t.m}×{t.n}×{t.k}", str(t.count), t.kernel) if t else ("", "0", "not run")
            totals = (si(sum(d.effective_flops for d in row.dense)), si(sum(p.effective_flops for p in row.pruned)),
                      share(row.declared), share(row.observed) + mark) if i == 0 else ("",) * 4
            table.add_row(row.gemm if i == 0 else "", *shape, *totals)
    console.print(table)
    console.print(Text("FLOPs count nonzero weights and unmasked pairs only; kept = pruned / dense"))
    for mismatch in mismatches:
        errors.print(Text(f"mismatch: {mismatch}"), soft_wrap=True)
    if mismatches:
        raise typer.Exit(1)
    console.print(Text(f"declared effects match the traced GEMMs (within {TOLERANCE:.0%} plus granularity rounding)"))


@leaderboard_app.command("build")
def leaderboard_build(
    out: Annotated[Path, typer.Option(help="folder for the generated site")] = Path("site"),
    db: DbOption = None,
) -> None:
    """Regenerate the static site from the registry.

    Example: prunereg leaderboard build --out site
    """
    from prunereg.leaderboard.build import build_site
    from prunereg.registry.db import connect

    index = build_site(connect(db), out)
    console.print(Text(f"site written: {index}"))


class PhaseChoice(str, Enum):
    prefill = "prefill"
    decode = "decode"


class SpeedupChoice(str, Enum):
    measured = "measured"
    theoretical = "theoretical"


def percent(fraction: float) -> str:
    return f"{round(fraction * 100, 6):g}"


@app.command()
def frontier(
    phase: Annotated[PhaseChoice, typer.Option(help="which latency: prefill (TTFT) or decode (TPOT)")],
    batch: Annotated[int, typer.Option(min=1, help="batch size of the scenario")],
    device: Annotated[Optional[str], typer.Option(help="part of the device name, e.g. h200")] = None,
    model: Annotated[Optional[str], typer.Option(help="model name, e.g. prunereg-mini")] = None,
    speedup: Annotated[SpeedupChoice, typer.Option(help="speedup axis of the frontier")] = SpeedupChoice.measured,
    all_points: Annotated[bool, typer.Option("--all", help="list dominated points too, with their rank")] = False,
    db: DbOption = None,
) -> None:
    """Pareto frontier (speedup vs quality loss) and the family winning each loss tolerance, per scenario group.

    Quality is what prunereg measured (held-out cross-entropy); claims reported in submissions are not used, since no latency was measured next to them on the same machine.

    Example: prunereg frontier --phase prefill --batch 1 --device h200
    """
    from prunereg.registry.analysis import scenario_analysis
    from prunereg.registry.db import connect

    analyses = scenario_analysis(connect(db), phase.value, batch, device, model, speedup.value)
    if not analyses:
        raise fail(f"no latency rows for {phase.value} at batch {batch}"
                   + (f" on a device matching '{device}'" if device else "") + (f" for model '{model}'" if model else ""))
    for a in analyses:
        k = a.key
        console.print(Text(f"{k.model} · {k.device_name} · {k.dtype} · {k.execution_mode} · {k.scenario}", style="bold"))
        if a.has_quality:
            title = f"Pareto frontier ({a.speedup_kind} speedup)" + (" and dominated points" if all_points else "")
            shown = sorted((r for r in a.rows if r.quality_loss is not None),
                           key=lambda r: (r.dominated_by, r.quality_loss, -r.speedup)) if all_points else a.frontier
        else:  # e.g. random-weight runs of catalog models: still worth seeing the speedups
            title = "no measured quality in this group (random weights?): no frontier, speedups only"
            shown = sorted(a.rows, key=lambda r: (-r.speedup, r.method_slug, r.operating_point))
        table = Table(title=Text(title))
        for column in ("method", "family", "point", "loss %", "speedup", "theoretical", "realization", "rank"):
            table.add_column(column, justify="right" if column in ("loss %", "speedup", "theoretical", "realization", "rank") else "left")
        for r in shown:
            loss = "n/a" if r.quality_loss is None else f"{r.quality_loss * 100:.1f}"
            table.add_row(Text(r.method_name), r.family_label, Text(r.operating_point), loss, f"{r.speedup:.2f}x",
                          f"{r.theoretical_speedup:.2f}x", f"{r.realization:.2f}", "" if r.dominated_by is None else str(r.dominated_by))
        console.print(table)
        if not a.has_quality:
            continue
        bands = Table(title="best family per quality-loss tolerance")
        for column in ("tolerance", "family", "best point", "speedup"):
            bands.add_column(column, justify="right" if column == "speedup" else "left")
        for b in a.bands:
            tolerance = f"{percent(b.low)} %" if b.low == b.high else f"{percent(b.low)}–{percent(b.high)} %"
            bands.add_row(tolerance, b.family_label, Text(b.method), f"{b.speedup:.2f}x")
        console.print(bands)
    console.print(Text("quality: measured by prunereg (held-out cross-entropy); reported claims are not used "
                       "(no latency measured with them on the same machine)"))


class ExportFormat(str, Enum):
    csv = "csv"
    json = "json"


class ExportTable(str, Enum):
    latency = "latency"
    quality = "quality"


@app.command()
def export(
    fmt: Annotated[ExportFormat, typer.Option("--format", help="csv or json")] = ExportFormat.csv,
    table: Annotated[Optional[ExportTable], typer.Option(help="only this table [csv default: latency; json default: both]")] = None,
    out: Annotated[Optional[Path], typer.Option(help="write here instead of stdout")] = None,
    db: DbOption = None,
) -> None:
    """Export the registry as flat tables for pandas: latency rows and quality figures.

    latency: one row per latency measurement with its provenance (method, spec hash, operating point, model, weights, environment key and every environment field as env_* columns), the scenario, median/p20/p80 ms, dense median, measured and theoretical speedup, realization, how it really ran (execution, fallback reason), the GPU's NVML state before and after (gpu_before_*, gpu_after_*) and the measured quality loss (task, metric).

    quality: every quality figure; provenance is measured (with its run) or reported / measured-elsewhere (with arxiv and paper_table).

    CSV writes one table (--table, default latency): pandas.read_csv(FILE). JSON writes {"latency": [...], "quality": [...]} (or only the --table one): pandas.DataFrame(data["latency"]).

    Example: prunereg export --format json --out registry.json
    """
    import csv
    import io

    from prunereg.registry.db import connect
    from prunereg.registry.export import LATENCY_COLUMNS, QUALITY_COLUMNS, latency_records, quality_records

    engine = connect(db)
    if fmt is ExportFormat.json:
        tables = [table] if table else list(ExportTable)
        loaders = {ExportTable.latency: latency_records, ExportTable.quality: quality_records}
        text = json.dumps({t.value: loaders[t](engine) for t in tables}, indent=1, ensure_ascii=False) + "\n"
    else:
        table = table or ExportTable.latency
        columns, records = ((LATENCY_COLUMNS, latency_records(engine)) if table is ExportTable.latency
                            else (QUALITY_COLUMNS, quality_records(engine)))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(records)
        text = buffer.getvalue()
    if out is None:
        typer.echo(text, nl=False)
    else:
        out.write_text(text, encoding="utf-8")
        errors.print(Text(f"written: {out}"))


class Listing(str, Enum):
    submissions = "submissions"
    models = "models"
    devices = "devices"
    scenarios = "scenarios"
    adapters = "adapters"


@app.command("list")
def list_(
    what: Annotated[Listing, typer.Argument(help="what to list")] = Listing.submissions,
    folder: Annotated[Path, typer.Option(help="submissions folder")] = Path("submissions"),
) -> None:
    """List submissions, catalog models, device profiles, scenario suites or adapters.

    Example: prunereg list models
    """
    table = Table()
    if what is Listing.submissions:
        for column in ("file", "method", "family", "adapter", "operating points"):
            table.add_column(column)
        for path in sorted(folder.glob("*.json")):
            spec, problems = validate_file(path)
            if spec is None:
                table.add_row(Text(str(path)), Text(f"invalid: {len(problems)} problem(s)"), "", "", "")
            else:
                points = ", ".join(p.name for p in spec.adapter.operating_points)
                table.add_row(Text(str(path)), Text(spec.method.name), spec.family.value, spec.adapter.name, Text(points))
    elif what is Listing.models:
        for column in ("name", "type", "layers", "hidden", "heads/kv", "intermediate", "vocab"):
            table.add_column(column)
        for m in models().values():
            table.add_row(m.name, m.model_type, str(m.num_hidden_layers), str(m.hidden_size),
                          f"{m.num_attention_heads}/{m.num_key_value_heads}", str(m.intermediate_size), str(m.vocab_size))
    elif what is Listing.devices:
        for column in ("name", "device", "TFLOP/s", "TB/s"):
            table.add_column(column)
        for d in devices().values():
            table.add_row(d.name, d.label, f"{d.matmul_flops / 1e12:.1f}", f"{d.memory_bandwidth / 1e12:.3f}")
    elif what is Listing.scenarios:
        table.add_column("suite")
        table.add_column("scenarios")
        for name, scenarios in suites().items():
            table.add_row(name, ", ".join(s.name for s in scenarios))
    else:
        from prunereg.adapters import ADAPTER_MODULES
        from prunereg.spec.submission import ADAPTER_FAMILIES

        table.add_column("adapter")
        table.add_column("families")
        for name in ADAPTER_MODULES:
            table.add_row(name, ", ".join(sorted(f.value for f in ADAPTER_FAMILIES[name])))
    console.print(table)


@app.command()
def schema(check: Annotated[bool, typer.Option(help="only check that the committed schema is current")] = False) -> None:
    """Write the submission JSON Schema generated from the pydantic models (or check it is current).

    Example: prunereg schema --check
    """
    text = json.dumps(json_schema(), indent=2) + "\n"
    if check:
        if SCHEMA_FILE.read_text() != text:
            raise fail(f"{SCHEMA_FILE} is out of date: run `prunereg schema`")
        console.print(Text(f"{SCHEMA_FILE} is current"))
        return
    SCHEMA_FILE.write_text(text)
    console.print(Text(f"wrote {SCHEMA_FILE}"))


db_app = typer.Typer(no_args_is_help=True, help="The registry database.")
app.add_typer(db_app, name="db")


@db_app.command("upgrade")
def db_upgrade(db: DbOption = None) -> None:
    """Bring the registry's schema to the newest migration (every command also does it on connect).

    Example: prunereg db upgrade --db postgresql+psycopg://user@host/prunereg
    """
    from prunereg.registry.db import connect, current_revision

    engine = connect(db)
    console.print(Text(f"{engine.url.render_as_string(hide_password=True)}: at revision {current_revision(engine)}"))


if __name__ == "__main__":
    app()
