"""Commands on the registry: ingest saved evaluations, the frontier, export, migrations."""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, TextIO

import typer
from rich.table import Table
from rich.text import Text

from .common import DbOption, connect, console, empty_registry, fail, load_all, load_valid, note, registry_name


def ingest_saved(
    files: Annotated[list[Path], typer.Argument(help="results written by `prunereg evaluate --save`")],
    submissions: Annotated[
        Path, typer.Option(help="the registered submissions; each result's embedded submission must equal its own")
    ] = Path("submissions"),
    db: DbOption = None,
) -> None:
    """Store saved evaluations (e.g. measured on a GPU machine) in the registry: all files or none.

    A results file is untrusted: it is read with size and encoding limits, its statistics must be
    those of its samples, its theoretical times those prunereg computes, and its submission the one
    in --submissions. Every problem of every file is printed as FILE: /json/pointer: message, and
    then nothing is stored. Ingesting a file twice adds nothing; a differing measurement of the same
    point and environment is stored as another run.

    Example: prunereg ingest results/h200/*.json
    """
    from prunereg.spec.result_checks import load_saved

    loaded = load_all(files, lambda path: load_saved(path, submissions))
    _store_all(db, files, [(s.submission, s.result) for s in loaded], update_method=False)


def _store_all(db: str | None, files: list[Path], items: list, update_method: bool = True) -> None:
    """Every (submission, result) in one transaction, one summary line per file; on any error nothing is stored."""
    from sqlalchemy.exc import SQLAlchemyError

    from prunereg.registry.ingest import ingest_all

    try:
        summaries = ingest_all(connect(db), items, update_method=update_method)
    except (SQLAlchemyError, ValueError) as err:
        raise fail(f"nothing stored: {' '.join(str(err).split())[:300]}") from None
    for path, summary in zip(files, summaries):
        console.print(Text(f"{path}: {summary}"))


def register(
    files: Annotated[list[Path], typer.Argument(help="submission JSON files")],
    db: DbOption = None,
) -> None:
    """Store submissions without measuring them: method, operating points and quality claims, all files or none.

    What a paper reports enters the registry this way; `prunereg frontier --quality reported` then joins each
    claim with the latency measured for its point (here or ingested from a GPU), and the site shows the claims
    on the method pages. Registering a file twice adds nothing.

    Example: prunereg register submissions/*.json
    """
    _store_all(db, files, [(s, None) for s in load_valid(files)])


class PhaseChoice(str, Enum):
    prefill = "prefill"
    decode = "decode"


class SpeedupChoice(str, Enum):
    measured = "measured"
    theoretical = "theoretical"


def percent(fraction: float) -> str:
    return f"{round(fraction * 100, 6):g}"


class QualityChoice(str, Enum):
    measured = "measured"
    reported = "reported"


QUALITY_NOTES = {
    "measured": "quality: MEASURED by prunereg on the run's own model (held-out cross-entropy or its first task)",
    "reported": (
        "quality: REPORTED in papers (arXiv id and table per row), joined with the latency prunereg measured for "
        "the same operating point on the same base model's shapes; loss = relative increase of perplexity, "
        "relative drop of accuracy; one task and protocol per group"
    ),
}


def frontier(
    phase: Annotated[PhaseChoice, typer.Option(help="which latency: prefill (TTFT) or decode (TPOT)")],
    batch: Annotated[int, typer.Option(min=1, help="batch size of the scenario")],
    device: Annotated[str | None, typer.Option(help="part of the device name, e.g. h200")] = None,
    model: Annotated[str | None, typer.Option(help="model name, e.g. prunereg-mini")] = None,
    speedup: Annotated[SpeedupChoice, typer.Option(help="speedup axis of the frontier")] = SpeedupChoice.measured,
    quality: Annotated[
        QualityChoice, typer.Option(help="quality axis: measured by prunereg, or reported in papers (never mixed)")
    ] = QualityChoice.measured,
    with_recovery: Annotated[
        bool, typer.Option("--with-recovery", help="reported: admit claims that include fine-tuning after pruning")
    ] = False,
    all_points: Annotated[bool, typer.Option("--all", help="list dominated points too, with their rank")] = False,
    db: DbOption = None,
) -> None:
    """Pareto frontier (speedup vs quality loss) and the family winning each loss tolerance, per scenario group.

    --quality measured (default) uses what prunereg measured on the run's model; --quality reported joins
    the papers' claims with the latency measured for the same point on the same base model's shapes, one
    group per task and protocol, one-shot claims only unless --with-recovery.

    Each speedup shows its 95 % paired-bootstrap interval over the interleaved dense/pruned repeats and a
    noise flag. A point whose measured speedup is too noisy (interval wider than ±5 %, or without dense
    samples a p80/p20 spread above 3 %) is left out of the frontier and the bands, and listed after them
    with the reason; retired runs (`prunereg runs retire`) are left out altogether.

    Example: prunereg frontier --quality reported --phase prefill --batch 1 --device h200
    """
    from prunereg.leaderboard.display import family_label, noise_reason
    from prunereg.registry.analysis import scenario_analysis

    engine = connect(db)
    if empty := empty_registry(engine):
        raise fail(empty)
    analyses = scenario_analysis(engine, phase.value, batch, device, model, speedup.value, quality.value, with_recovery)
    reported = quality is QualityChoice.reported
    if not analyses:
        raise fail(
            f"no latency rows for {phase.value} at batch {batch}"
            + (" with a reported claim for their point and base model" if reported else "")
            + (f" on a device matching '{device}'" if device else "")
            + (f" for model '{model}'" if model else "")
            + f" in the registry {registry_name(engine)}"
        )
    for a in analyses:
        k = a.key
        task = f" · {quality.value} {k.task}" if k.task else ""
        console.print(
            Text(f"{k.model} · {k.device_name} · {k.dtype} · {k.execution_mode} · {k.scenario}{task}", style="bold")
        )
        if a.has_quality:
            title = f"Pareto frontier ({a.speedup_kind} speedup, {quality.value} quality)" + (
                " and dominated points" if all_points else ""
            )
            shown = a.by_rank() if all_points else a.frontier
        else:  # e.g. random-weight runs of catalog models: still worth seeing the speedups
            title = "no measured quality in this group (random weights?): no frontier, speedups only"
            shown = a.by_rank()
        table = Table(title=Text(title))
        columns = ["method", "family", "point", "loss %", "speedup", "95 % interval", "noise", "theoretical",
                   "realization", "rank", "run"]  # fmt: skip
        for column in columns + (["reported in"] if reported else []):
            table.add_column(column, justify="right" if column in columns[3:] else "left")
        for r in shown:
            loss = "n/a" if r.quality_loss is None else f"{r.quality_loss * 100:.1f}"
            source = [Text(_reported_in(r))] if reported else []
            table.add_row(
                Text(r.method_name),
                family_label(r.family),
                Text(r.operating_point),
                loss,
                f"{r.speedup:.2f}x",
                interval(r),
                "noisy" if noise_reason(r) else "",
                f"{r.theoretical_speedup:.2f}x",
                f"{r.realization:.2f}",
                "" if r.dominated_by is None else str(r.dominated_by),
                str(r.run_id),
                *source,
            )
        console.print(table)
        if a.has_quality and a.excluded:
            left = Table(title=Text("left out of the frontier and the bands: speedup too noisy to rank"))
            for column in ("method", "point", "loss %", "speedup", "95 % interval", "run", "why"):
                left.add_column(column, justify="right" if column in ("loss %", "speedup", "run") else "left")
            for r in a.excluded:
                loss = "n/a" if r.quality_loss is None else f"{r.quality_loss * 100:.1f}"
                left.add_row(
                    Text(r.method_name), Text(r.operating_point), loss, f"{r.speedup:.2f}x", interval(r),
                    str(r.run_id), Text(r.excluded or ""),
                )  # fmt: skip
            console.print(left)
        if not a.has_quality:
            continue
        bands = Table(title=f"best family per quality-loss tolerance ({quality.value} quality)")
        for column in ("tolerance", "family", "best point", "speedup"):
            bands.add_column(column, justify="right" if column == "speedup" else "left")
        for b in a.bands:
            tolerance = f"{percent(b.low)} %" if b.low == b.high else f"{percent(b.low)}–{percent(b.high)} %"
            bands.add_row(tolerance, family_label(b.family), Text(b.method), f"{b.speedup:.2f}x")
        console.print(bands)
    console.print(Text(QUALITY_NOTES[quality.value]))


def interval(row) -> str:
    """'1.62–2.31x', or 'n/a' for a latency stored without dense samples."""
    if row.speedup_low is None or row.speedup_high is None:
        return "n/a"
    return f"{row.speedup_low:.2f}–{row.speedup_high:.2f}x"


def _reported_in(row) -> str:
    recovery = " + recovery fine-tuning" if row.recovery else ""
    timed = f" (timed on {row.model}, same shapes)" if row.model != row.base_model else ""
    return f"arXiv:{row.arxiv} {row.paper_table}{recovery}{timed}"


class ExportFormat(str, Enum):
    csv = "csv"
    json = "json"


class ExportTable(str, Enum):
    latency = "latency"
    quality = "quality"
    reported = "reported"


def export(
    fmt: Annotated[ExportFormat, typer.Option("--format", help="csv or json")] = ExportFormat.csv,
    table: Annotated[
        ExportTable | None, typer.Option(help="only this table [csv default: latency; json default: both]")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="write here instead of stdout")] = None,
    db: DbOption = None,
) -> None:
    """Export the registry as flat tables for pandas: latency rows, quality figures, reported quality x speed.

    latency: one row per latency measurement of a run that is not retired, with its provenance (method, spec hash, operating point, model, weights, run id, environment key and every environment field as env_* columns), the scenario, median/p20/p80 ms, dense median, measured speedup with its 95 % interval (speedup_low, speedup_high) and why it is left out of the front if it is (excluded), theoretical speedup, realization, how it really ran (execution, fallback reason), the GPU's NVML state before and after (gpu_before_*, gpu_after_*) and the measured quality loss (task, metric).

    quality: every quality figure; provenance is measured (with its run) or reported / measured-elsewhere (with arxiv, paper_table, paper_row, evaluation length, averaged tasks, recovery and calibration).

    reported: the papers' claims joined with the latency measured for their point on their base model's shapes; quality_provenance is "reported" on every row, recovery claims included and marked.

    CSV writes one table (--table, default latency): pandas.read_csv(FILE). JSON writes {"latency": [...], "quality": [...], "reported": [...]} (or only the --table one): pandas.DataFrame(data["latency"]); its latency rows also carry the raw samples and dense_samples.

    Example: prunereg export --format json --out registry.json
    """
    from prunereg.registry.export import write_csv, write_json

    engine = connect(db)
    if empty := empty_registry(engine):
        note(f"{empty}; the export has no rows")

    def write(stream: TextIO) -> None:  # record by record: a large registry never becomes one string
        if fmt is ExportFormat.json:
            write_json(engine, [table.value] if table else [t.value for t in ExportTable], stream)
        else:
            write_csv(engine, (table or ExportTable.latency).value, stream)

    if out is None:
        write(sys.stdout)
        sys.stdout.flush()
    else:
        try:
            with out.open("w", encoding="utf-8", newline="") as stream:
                write(stream)
        except OSError as err:
            raise fail(f"cannot write {out}: {err.strerror}") from None
        note(f"written: {out}")


def db_upgrade(db: DbOption = None) -> None:
    """Bring the registry's schema to the newest migration (every command also does it on connect).

    Example: prunereg db upgrade --db postgresql+psycopg://user@host/prunereg
    """
    from prunereg.registry.db import current_revision

    engine = connect(db)
    console.print(Text(f"{registry_name(engine)}: at revision {current_revision(engine)}"))
