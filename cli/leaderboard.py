"""The static leaderboard site."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from .common import DbOption, console


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
