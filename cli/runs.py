"""`prunereg runs`: list the registry's runs with their ids, retire one with a reason (nothing is deleted)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from .common import DbOption, connect, console, empty_registry, fail, registry_name


def list_(
    method: Annotated[str | None, typer.Option(help="only this method's runs (its slug)")] = None,
    db: DbOption = None,
) -> None:
    """List every run with its id, what it measured and where, oldest first; retired runs with their reason.

    Example: prunereg runs list --method shortgpt
    """
    from prunereg.registry.runs import run_summaries

    engine = connect(db)
    if empty := empty_registry(engine):
        raise fail(empty)
    runs = run_summaries(engine, method)
    if not runs:
        raise fail(f"no runs of method '{method}' in the registry {registry_name(engine)}")
    table = Table(title=Text(f"runs in {registry_name(engine)}"))
    for column in ("run", "method", "point", "model", "weights", "device", "mode", "scenarios", "measured", "status"):
        table.add_column(column, justify="right" if column in ("run", "scenarios") else "left")
    for r in runs:
        status = "shown" if r.retired_at is None else f"retired {r.retired_at:%Y-%m-%d}: {r.retired_why}"
        table.add_row(
            str(r.id), Text(r.method_slug), Text(r.operating_point), Text(r.model), r.weights, Text(r.device_name),
            r.execution_mode, str(r.scenarios), f"{r.created_at:%Y-%m-%d %H:%M}", Text(status),
        )  # fmt: skip
    console.print(table)


def retire(
    run: Annotated[int, typer.Argument(help="the run's id, as `prunereg runs list` shows it")],
    why: Annotated[str, typer.Option(help="why it is retired: kept with the run and shown on the method page")],
    db: DbOption = None,
) -> None:
    """Hide a run from the Pareto fronts, the transition bands, `prunereg frontier` and exports; nothing is deleted.

    The run keeps its numbers, and the method page lists it under "retired runs" with the reason and the
    time. A point whose runs are all retired is measured again by the next `prunereg evaluate`.

    Example: prunereg runs retire 12 --why "timed while another job loaded the machine"
    """
    from prunereg.registry.runs import RetireError
    from prunereg.registry.runs import retire as retire_run

    engine = connect(db)
    try:
        retired = retire_run(engine, run, why)
    except RetireError as err:
        raise fail(str(err)) from None
    console.print(
        Text(
            f"retired run {retired.id} ({retired.method_slug} · {retired.operating_point} on {retired.model}, "
            f"{retired.device_name}): {retired.retired_why}"
        )
    )
