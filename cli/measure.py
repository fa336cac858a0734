"""Commands that build a pruned model: evaluate (measure and store), trace (check the declaration), prune (write a checkpoint).

torch and transformers are imported inside the commands, so the rest of the CLI stays fast.
"""

from __future__ import annotations

from collections import Counter
from enum import Enum
from pathlib import Path
from typing import Annotated, cast

import typer
from rich.table import Table
from rich.text import Text

from prunereg.spec.catalog import EMBEDDED_MODEL, suites
from prunereg.spec.results import MAX_REPEATS, ExecutionMode, PointResult, SavedEvaluation
from prunereg.spec.submission import Submission
from prunereg.spec.tasks import task as quality_task
from prunereg.spec.uncertainty import MAX_HALF_WIDTH

from .common import DbOption, ForceOption, connect, console, errors, fail, load_valid


class Device(str, Enum):
    cpu = "cpu"
    cuda = "cuda"


class ExecutionChoice(str, Enum):
    """`spec.results.EXECUTION_MODES` as a command-line choice."""

    eager = "eager"
    graph = "graph"
    compiled = "compiled"
    fused = "fused"


DEFAULT_REPEATS = {"eager": 15, "graph": 50, "compiled": 50, "fused": 50}
MORE_REPEATS = 4
"""Default --max-repeats: this many times --repeats. Four times the pairs halve a speedup's interval (it
narrows as one over the square root of the pairs); a point still too noisy then is flagged, not timed on."""


def evaluate(
    submission: Annotated[Path, typer.Argument(help="submission JSON file")],
    model: Annotated[str, typer.Option(help="catalog model name or a local checkpoint folder")] = EMBEDDED_MODEL,
    device: Annotated[Device, typer.Option(help="where to measure")] = Device.cpu,
    scenarios: Annotated[str, typer.Option(help="scenario suite: " + ", ".join(suites()))] = "ci",
    mode: Annotated[
        ExecutionChoice | None,
        typer.Option(
            help="execution mode (README, 'Execution modes') [default: fused with --tp, else graph on cuda, eager on cpu]"
        ),
    ] = None,
    repeats: Annotated[
        int | None,
        typer.Option(min=3, max=1000, help="timed repeats per scenario [default: 15 eager, 50 graph/compiled/fused]"),
    ] = None,
    max_repeats: Annotated[
        int | None,
        typer.Option(
            min=3,
            max=MAX_REPEATS,
            help=f"add repeats up to this many while a speedup's interval is wider than "
            f"±{MAX_HALF_WIDTH:.0%} [default: {MORE_REPEATS} × --repeats]",
        ),
    ] = None,
    threads: Annotated[
        int | None,
        typer.Option(
            min=1, max=4096, help="torch CPU threads [default: torch's, at most the CPUs this process may use]"
        ),
    ] = None,
    warmup: Annotated[int, typer.Option(min=0, max=100, help="untimed repeats first")] = 3,
    point: Annotated[list[str] | None, typer.Option(help="measure only this operating point (repeatable)")] = None,
    save: Annotated[
        Path | None,
        typer.Option(help="also write the result as JSON into this folder, rewritten after each operating point"),
    ] = None,
    quality_tasks: Annotated[
        list[str] | None,
        typer.Option(
            "--task", help="quality task to measure instead of the suite's (repeatable; `prunereg list tasks`)"
        ),
    ] = None,
    remeasure: Annotated[
        bool,
        typer.Option("--remeasure", help="measure points already in the registry again: a new run beside the old ones"),
    ] = False,
    tp: Annotated[
        int | None,
        typer.Option(
            "--tp",
            min=2,
            max=64,
            help="tensor-parallel over this many GPUs (CPU: gloo processes), fused mode sharded "
            "(README, 'Tensor parallelism') [default: one device]",
        ),
    ] = None,
    db: DbOption = None,
) -> None:
    """Apply a submission at each operating point, measure latency and quality, store the results.

    A point already measured here (same submission, model, weights and environment) is skipped, unless
    --remeasure: then it is measured again and stored as another run, the earlier ones kept (hide one with
    `prunereg runs retire`). Repeats are added while a speedup's interval is too wide (--max-repeats), and
    a scenario timed on a busy machine is warned about.

    Example: prunereg evaluate submissions/shortgpt.json --model prunereg-mini --scenarios ci
    """
    (spec,) = load_valid([submission])
    execution: ExecutionMode = (
        cast("ExecutionMode", mode.value) if mode else "fused" if tp else "graph" if device is Device.cuda else "eager"
    )
    repeats = repeats or DEFAULT_REPEATS[execution]
    if scenarios not in suites():
        raise fail(f"unknown scenario suite '{scenarios}' (known: {', '.join(suites())})")
    try:
        for name in quality_tasks or ():
            quality_task(name)
    except ValueError as err:
        raise fail(str(err)) from None
    from rich.progress import Progress

    from prunereg.evaluate import EvaluationError
    from prunereg.evaluate import evaluate as run_evaluation
    from prunereg.registry.ingest import ingest
    from prunereg.registry.queries import stored_points

    engine = connect(db)
    names = [scenario.name for scenario in suites()[scenarios]]
    added: Counter[str] = Counter()

    def stored(model_name: str, weights: str, env) -> set[str]:
        if remeasure:
            return set()
        return stored_points(engine, spec.spec_hash(), model_name, weights, env.key(), names)

    done: list[PointResult] = []

    def store(partial) -> None:
        added.update(ingest(engine, spec, partial).added)
        if save is not None:  # after every point, so a run killed later (a device call's time limit) keeps it
            done.extend(partial.points)
            SavedEvaluation(submission=spec, result=partial.model_copy(update={"points": done})).save(save)

    with Progress(console=errors, transient=True) as progress:
        task = progress.add_task(
            f"evaluating {spec.method.slug}",
            total=len(set(point or ()) or spec.adapter.operating_points) * (len(names) + 1),
        )

        def on_step(label: str) -> None:
            progress.update(task, advance=1, description=f"{spec.method.slug} · {label}")

        try:
            result = run_evaluation(
                spec,
                model,
                device.value,
                suites()[scenarios],
                warmup,
                repeats,
                execution,
                set(point or ()),
                on_step,
                stored,
                store,
                folder=submission.absolute().parent,
                tasks=tuple(quality_tasks) if quality_tasks else None,
                max_repeats=max_repeats or min(MORE_REPEATS * repeats, MAX_REPEATS),
                threads=threads,
                on_warning=lambda text: progress.console.print(Text(f"warning: {text}", style="yellow")),
                tensor_parallel=tp,
            )
        except EvaluationError as err:
            raise fail(str(err)) from None
    asked = [p.name for p in spec.adapter.operating_points if not point or p.name in point]
    reused = [name for name in asked if name not in {r.operating_point for r in result.points}]
    if reused:
        console.print(Text(f"already in the registry, not measured again: {', '.join(reused)}"))
    console.print(results_table(spec, result))
    for measured in result.points:
        files = [(measured.checkpoint.path, f) for f in measured.checkpoint.files] if measured.checkpoint else []
        for folder, file in files:
            console.print(Text(f"{measured.operating_point}: checkpoint {folder}/{file.name} sha256 {file.sha256}"))
    console.print(
        Text("stored in the registry: " + (", ".join(f"{n} {t}" for t, n in added.items() if n) or "nothing new"))
    )
    if save is not None:
        path = SavedEvaluation(submission=spec, result=result).save(save)
        console.print(Text(f"saved: {path}"))


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
                Text(point.operating_point),
                lat.scenario.name,
                f"{lat.median:.2f}",
                f"{lat.dense_median:.2f}",
                f"{lat.speedup:.2f}x",
                f"{lat.theoretical_speedup:.2f}x",
                f"{lat.realization:.2f}",
                loss,
                f"{point.stats.parameters / 1e6:.2f}M",
            )
    fallbacks = {lat.fallback for point in result.points for lat in point.latency if lat.fallback}
    if fallbacks:
        table.caption = "timed in eager mode instead: " + "; ".join(sorted(fallbacks))
    return table


def prune(
    submission: Annotated[Path, typer.Argument(help="submission JSON file")],
    point: Annotated[str, typer.Option(help="operating point name")],
    out: Annotated[Path, typer.Option(help="folder for the checkpoint, replaced whole")],
    model: Annotated[str, typer.Option(help="catalog model name or a local checkpoint folder")] = EMBEDDED_MODEL,
    force: ForceOption = False,
) -> None:
    """Write the model pruned at one operating point as a plain transformers checkpoint.

    The checkpoint is written into a fresh folder that then replaces --out; a folder prunereg did not write is refused unless --force.

    Example: prunereg prune submissions/shortgpt.json --point drop-25 --out pruned/shortgpt-25
    """
    (spec,) = load_valid([submission])
    names = [p.name for p in spec.adapter.operating_points]
    if point not in names:
        raise fail(f"no operating point '{point}' in {submission} (known: {', '.join(names)})")
    from prunereg.outputs import CHECKPOINT_MARKER, OutputRefused, check_output

    try:
        check_output(out, CHECKPOINT_MARKER, force)  # before loading torch and a model for nothing
    except OutputRefused as err:
        raise fail(str(err)) from None
    import torch

    from prunereg.adapters import get_adapter
    from prunereg.evaluate import EvaluationError, apply_point, load_checked
    from prunereg.harness.checkpoint import CheckpointRefused, save_pruned

    try:
        loaded = load_checked(spec, model, "cpu", torch.float32, [spec.point(point)])
        pruned, _ = apply_point(spec, loaded, spec.point(point), submission.absolute().parent)
        adapter = get_adapter(spec.adapter.name)
        try:
            save_pruned(adapter, pruned, loaded.tokenizer, out, force)
        except OSError as err:
            raise fail(f"cannot write the checkpoint to {out}: {err.strerror or err}") from None
    except (EvaluationError, CheckpointRefused, OutputRefused) as err:
        raise fail(str(err)) from None
    console.print(Text(f"checkpoint written: {out}"))


def trace(
    submission: Annotated[Path, typer.Argument(help="submission JSON file")],
    point: Annotated[str, typer.Option(help="operating point name")],
    model: Annotated[str, typer.Option(help="catalog model name or a local checkpoint folder")] = EMBEDDED_MODEL,
    seq_len: Annotated[
        int, typer.Option(min=64, max=65536, help="prompt tokens of the traced prefill (batch 1), a multiple of 64")
    ] = 128,
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
    import torch

    from prunereg.evaluate import EvaluationError, apply_point, load_checked, trace_point
    from prunereg.harness.trace import TOLERANCE

    try:
        loaded = load_checked(spec, model, "cpu", torch.float32, [spec.point(point)])
        pruned, effects = apply_point(spec, loaded, spec.point(point), submission.absolute().parent)
    except EvaluationError as err:
        raise fail(str(err)) from None
    rows, mismatches = trace_point(loaded, pruned, effects, seq_len)

    def si(flops: float) -> str:
        scale, unit = next(
            ((s, u) for s, u in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")) if flops >= s), (1, "")
        )
        return f"{flops / scale:.3g}{unit}"

    def share(value: float | None) -> str:
        return "" if value is None else f"{value * 100:.3g} %"

    table = Table(
        title=Text(f"{spec.method.name} · {point} on {loaded.name}, one prefill of {seq_len} tokens"), box=None
    )
    for column in (
        "GEMM",
        "M×N×K",
        "count",
        "kernel",
        "dense\nFLOPs",
        "pruned\nFLOPs",
        "declared\nkept",
        "observed\nkept",
    ):
        table.add_column(
            column,
            justify="left" if column in ("GEMM", "kernel") else "right",
            no_wrap=column != "kernel",
            min_width=9 if column == "kernel" else None,
        )
    for row in rows:
        mark = " ✗" if row.mismatch else ""
        for i, t in enumerate(row.pruned or (None,)):
            shape = (f"{t.m}×{t.n}×{t.k}", str(t.count), t.kernel) if t else ("", "0", "not run")
            totals = (
                (
                    si(sum(d.effective_flops for d in row.dense)),
                    si(sum(p.effective_flops for p in row.pruned)),
                    "added" if row.added else share(row.declared),
                    share(row.observed) + mark,
                )
                if i == 0
                else ("",) * 4
            )
            table.add_row(row.gemm if i == 0 else "", *shape, *totals)
    console.print(table)
    console.print(
        Text(
            "FLOPs count nonzero weights and unmasked pairs only; kept = pruned / dense, "
            "or for an added GEMM observed / declared FLOPs"
        )
    )
    for mismatch in mismatches:
        errors.print(Text(f"mismatch: {mismatch}"), soft_wrap=True)
    if mismatches:
        raise typer.Exit(1)
    console.print(
        Text(
            "declared effects match the traced GEMMs (exactly where whole layers, heads or channels are counted; "
            f"elsewhere within {TOLERANCE:.0%} plus granularity rounding)"
        )
    )
