"""The static leaderboard site."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from .common import DbOption, ForceOption, connect, console, empty_registry, fail, note


def leaderboard_build(
    out: Annotated[Path, typer.Option(help="folder for the generated site, replaced whole")] = Path("site"),
    force: ForceOption = False,
    db: DbOption = None,
) -> None:
    """Regenerate the static site from the registry.

    The site is written into a fresh folder that then replaces --out, so no page of an earlier build stays behind. A folder prunereg did not write is refused unless --force.

    Example: prunereg leaderboard build --out site
    """
    from prunereg.leaderboard.build import build_site
    from prunereg.outputs import OutputRefused

    engine = connect(db)
    if empty := empty_registry(engine):
        note(f"{empty}; the site lists no method")
    try:
        index = build_site(engine, out, force=force)
    except OutputRefused as err:
        raise fail(str(err)) from None
    except OSError as err:
        raise fail(f"cannot write the site to {out}: {err.strerror or err}") from None
    console.print(Text(f"site written: {index}"))
