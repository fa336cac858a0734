"""What every command shares: the two consoles, the one-line failure, the registry option, loading submissions."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.text import Text

from prunereg.spec.submission import Submission
from prunereg.spec.validate import validate_file

console = Console(highlight=False)
errors = Console(stderr=True, highlight=False)

DbOption = Annotated[
    str | None,
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
