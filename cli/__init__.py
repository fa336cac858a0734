"""The `prunereg` command line: one module per command group, each command registered here once.

Heavy modules (torch, transformers) are imported inside the commands that build models, so
`validate`, `list`, `schema`, `frontier` and `export` answer in well under a second.
"""

from __future__ import annotations

from typing import Annotated

import typer

from prunereg import __version__

from . import check, leaderboard, measure, registry, runs, submissions, sweep

app = typer.Typer(
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    help="Benchmark and registry for LLM pruning methods.",
)


def _version(show: bool) -> None:
    if show:
        typer.echo(f"prunereg {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="print the version and exit")
    ] = False,
) -> None:
    """Benchmark and registry for LLM pruning methods."""


app.command()(submissions.validate)
app.command("list")(submissions.list_)
app.command()(submissions.schema)
app.command()(measure.evaluate)
app.command()(measure.trace)
app.command()(measure.prune)
app.command()(sweep.sweep)
app.command()(registry.register)
app.command("ingest")(registry.ingest_saved)
app.command()(registry.frontier)
app.command()(registry.export)
app.command("check")(check.check)
app.command("diff")(check.diff)

runs_app = typer.Typer(no_args_is_help=True, help="The registry's runs: list them, retire one (nothing is deleted).")
runs_app.command("list")(runs.list_)
runs_app.command("retire")(runs.retire)
app.add_typer(runs_app, name="runs")

db_app = typer.Typer(no_args_is_help=True, help="The registry database.")
db_app.command("upgrade")(registry.db_upgrade)
app.add_typer(db_app, name="db")

leaderboard_app = typer.Typer(no_args_is_help=True, help="The static leaderboard site.")
leaderboard_app.command("build")(leaderboard.leaderboard_build)
app.add_typer(leaderboard_app, name="leaderboard")
