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
    submissions: Annotated[
        Path, typer.Option(help="the registered submissions: method pages mark each version current or superseded")
    ] = Path("submissions"),
) -> None:
    """Regenerate the static site from the registry.

    The site is written into a fresh folder that then replaces --out, so no page of an earlier build stays behind. A folder prunereg did not write is refused unless --force. Each method page marks a submission version "current" when it is --submissions' <slug>.json and "superseded" when it is a copy in --submissions' superseded/<slug>/, current first.

    Example: prunereg leaderboard build --out site
    """
    from prunereg.leaderboard.build import build_site
    from prunereg.outputs import OutputRefused

    engine = connect(db)
    if empty := empty_registry(engine):
        note(f"{empty}; the site lists no method")
    if not submissions.is_dir():
        note(f"no submissions folder {submissions}: the method pages do not say which version is current")
    try:
        index = build_site(engine, out, force=force, submissions=submissions if submissions.is_dir() else None)
    except OutputRefused as err:
        raise fail(str(err)) from None
    except OSError as err:
        raise fail(f"cannot write the site to {out}: {err.strerror or err}") from None
    console.print(Text(f"site written: {index}"))
