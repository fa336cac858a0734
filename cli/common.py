"""What every command shares: the two consoles, the one-line failure, the registry option and connection,
loading submissions."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer
from rich.console import Console
from rich.text import Text

from prunereg.spec.checks import Problem
from prunereg.spec.submission import Submission
from prunereg.spec.validate import validate_file

T = TypeVar("T")

if TYPE_CHECKING:
    from sqlalchemy import Engine

PIPED_WIDTH = 10_000
"""Columns assumed when output goes to a pipe or a file: enough that no table cell is cut with '…'."""


def _console(stderr: bool = False) -> Console:
    """On a terminal rich fits tables to its width; piped or redirected it would assume 80 columns and
    cut cells, so there it gets room to print every cell in full (tables never stretch to the width)."""
    on_terminal = Console(stderr=stderr).is_terminal
    return Console(stderr=stderr, highlight=False, width=None if on_terminal else PIPED_WIDTH)


console = _console()
errors = _console(stderr=True)

DbOption = Annotated[
    str | None,
    typer.Option("--db", envvar="PRUNEREG_DB", help="SQLite file or SQLAlchemy URL [default: prunereg.db]"),
]
ForceOption = Annotated[
    bool, typer.Option("--force", help="replace --out even when it is a non-empty folder prunereg did not write")
]


def fail(message: str) -> typer.Exit:
    errors.print(Text(f"error: {message}"), soft_wrap=True)
    return typer.Exit(1)


def note(message: str) -> None:
    """A remark on stderr, so that it never mixes into data written to stdout."""
    errors.print(Text(message), soft_wrap=True)


def connect(db: str | None) -> Engine:
    """The registry, brought to the newest schema; exit 1 with one line when it cannot be opened."""
    from prunereg.registry.db import RegistryUnavailable
    from prunereg.registry.db import connect as open_registry

    try:
        return open_registry(db)
    except RegistryUnavailable as err:
        raise fail(str(err)) from None


def registry_name(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=True)


def empty_registry(engine: Engine) -> str | None:
    """'the registry sqlite:///x.db is empty ...' when it holds no method yet, else None."""
    from prunereg.registry.queries import is_empty

    if not is_empty(engine):
        return None
    return f"the registry {registry_name(engine)} is empty: `prunereg ingest` or `prunereg evaluate` fills it"


def load_all(files: list[Path], load: Callable[[Path], tuple[T | None, list[Problem]]]) -> list[T]:
    """Every file loaded, or exit 1 after printing one `FILE: /pointer: message` line per problem of every file."""
    loaded, bad = [], False
    for path in files:
        item, problems = load(path)
        for problem in problems:
            errors.print(Text(f"{path}: {problem.pointer or '/'}: {problem.message}"), soft_wrap=True)
        bad = bad or bool(problems)
        if item is not None:
            loaded.append(item)
    if bad:
        raise typer.Exit(1)
    return loaded


def load_valid(files: list[Path]) -> list[Submission]:
    """Every submission, valid, or exit 1 with every problem."""
    return load_all(files, validate_file)
