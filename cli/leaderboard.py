"""The static leaderboard site."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from .common import DbOption, ForceOption, connect, console, empty_registry, fail, note


def leaderboard_build(
    out: Annotated[Path, typer.Option(help="folder for the generated site")] = Path("site"),
    force: ForceOption = False,
    full: Annotated[
        bool, typer.Option("--full", help="render every page into a fresh folder, even over an earlier build")
    ] = False,
    db: DbOption = None,
    submissions: Annotated[
        Path, typer.Option(help="the registered submissions: method pages mark each version current or superseded")
    ] = Path("submissions"),
) -> None:
    """Regenerate the static site from the registry.

    A first build (or --full, or an --out whose earlier build came from another prunereg version or speedup axis) is written into a fresh folder that then replaces --out whole. Over an earlier build, which left a manifest of content hashes (.prunereg-manifest.json), only the group and method pages whose rows or records changed are rendered again; the summary pages and data files are rewritten and every other file is removed, so no page of an earlier build stays behind either way. A folder prunereg did not write is refused unless --force. Each method page marks a submission version "current" when it is --submissions' <slug>.json and "superseded" when it is a copy in --submissions' superseded/<slug>/, current first.

    Pages stay small however large the registry: one page per comparable group (its table split every 500 rows) with its rows as data/groups/<slug>.json; measured.html and data/leaderboard.json carry every row only while the registry holds at most 1,000 measured rows.

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
        index = build_site(
            engine, out, force=force, submissions=submissions if submissions.is_dir() else None, full=full
        )
    except OutputRefused as err:
        raise fail(str(err)) from None
    except OSError as err:
        raise fail(f"cannot write the site to {out}: {err.strerror or err}") from None
    console.print(Text(f"site written: {index}"))
