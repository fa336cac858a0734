"""Commands on submissions as data: validate, list, schema. None of them imports torch."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from prunereg.spec.adapters import adapters, family_table
from prunereg.spec.catalog import devices, models, suite_tasks, suites
from prunereg.spec.schemas import rendered
from prunereg.spec.tasks import tasks, tasks_table
from prunereg.spec.validate import validate_file

from .common import console, fail, load_valid


def validate(files: Annotated[list[Path], typer.Argument(help="submission JSON files")]) -> None:
    """Check submissions against the schema and the semantic checks.

    Example: prunereg validate submissions/*.json
    """
    for submission, path in zip(load_valid(files), files):
        console.print(
            Text(f"{path}: ok ({submission.method.name}, {len(submission.adapter.operating_points)} operating points)")
        )


class Listing(str, Enum):
    submissions = "submissions"
    models = "models"
    devices = "devices"
    scenarios = "scenarios"
    adapters = "adapters"
    tasks = "tasks"


def list_(
    what: Annotated[Listing, typer.Argument(help="what to list")] = Listing.submissions,
    folder: Annotated[Path, typer.Option(help="submissions folder")] = Path("submissions"),
    markdown: Annotated[
        bool,
        typer.Option(
            help="adapters and tasks only: print the README's family table (built-ins, with the submissions) "
            "or quality-task table"
        ),
    ] = False,
) -> None:
    """List submissions, catalog models, device profiles, scenario suites, adapters (built-in and plugins)
    or quality tasks.

    Example: prunereg list models
    """
    if what is Listing.adapters and markdown:
        slugs: dict[tuple[str, str], list[str]] = {}
        for path in sorted(folder.glob("*.json")):
            spec, _ = validate_file(path)
            if spec is not None:
                slugs.setdefault((spec.adapter.name, spec.family), []).append(spec.method.slug)
        typer.echo(family_table(slugs), nl=False)
        return
    if what is Listing.tasks and markdown:
        typer.echo(tasks_table(), nl=False)
        return
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
                table.add_row(
                    Text(str(path)), Text(spec.method.name), spec.family.value, spec.adapter.name, Text(points)
                )
    elif what is Listing.models:
        for column in ("name", "type", "layers", "hidden", "heads/kv", "intermediate", "vocab"):
            table.add_column(column)
        for m in models().values():
            table.add_row(
                m.name,
                m.model_type,
                str(m.num_hidden_layers),
                str(m.hidden_size),
                f"{m.num_attention_heads}/{m.num_key_value_heads}",
                str(m.intermediate_size),
                str(m.vocab_size),
            )
    elif what is Listing.devices:
        for column in ("name", "device", "TFLOP/s", "TB/s"):
            table.add_column(column)
        for d in devices().values():
            table.add_row(d.name, d.label, f"{d.matmul_flops / 1e12:.1f}", f"{d.memory_bandwidth / 1e12:.3f}")
    elif what is Listing.scenarios:
        table.add_column("suite")
        table.add_column("scenarios")
        table.add_column("quality tasks")
        for name, scenarios in suites().items():
            table.add_row(name, ", ".join(s.name for s in scenarios), ", ".join(suite_tasks(name)))
    elif what is Listing.tasks:
        for column in ("task", "version", "metric", "better", "kind", "data"):
            table.add_column(column)
        for quality_task in tasks().values():
            better = "higher" if quality_task.higher_is_better else "lower"
            table.add_row(
                quality_task.name, quality_task.version, quality_task.metric, better, quality_task.kind,
                Text(quality_task.data),
            )  # fmt: skip
    else:
        for column in ("adapter", "families", "parameters", "division", "provided by"):
            table.add_column(column)
        for row in adapters().values():
            families = ", ".join(sorted(f.value for f in row.families))
            table.add_row(row.name, families, row.params.__name__, row.division, Text(row.provider))
    console.print(table)


def schema(
    check: Annotated[bool, typer.Option(help="only check that the committed schema is current")] = False,
) -> None:
    """Write the JSON Schemas of submissions and saved evaluations, generated from the models (or check them).

    Example: prunereg schema --check
    """
    for path, text in rendered().items():
        if not check:
            path.write_text(text)
            console.print(Text(f"wrote {path}"))
        elif not path.is_file() or path.read_text() != text:
            raise fail(f"{path} is out of date: run `prunereg schema`")
        else:
            console.print(Text(f"{path} is current"))
