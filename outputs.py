"""Output folders that are replaced whole: the leaderboard site and pruned checkpoints.

A folder prunereg writes is marked with a small file (`.prunereg-site`, `.prunereg-checkpoint`).
A rebuild writes into a fresh hidden sibling and swaps it in only once everything is written, so
a crash never leaves half a site and pages or shards of an earlier build never linger. prunereg
never writes through a symbolic link, never replaces a file, and refuses a non-empty folder it
did not make unless told to (`force`), since replacing it deletes what is there.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SITE_MARKER = ".prunereg-site"
CHECKPOINT_MARKER = ".prunereg-checkpoint"


class OutputRefused(Exception):
    """The output path is not a folder prunereg may replace; the message says why and what to do."""


def check_output(out: Path, marker: str, force: bool = False) -> None:
    """Refuse a link, a file, or a non-empty folder without `marker` (unless `force`)."""
    if out.is_symlink():
        raise OutputRefused(f"{out} is a symbolic link: give the folder itself, prunereg never writes through a link")
    if not out.exists():
        return
    if not out.is_dir():
        raise OutputRefused(f"{out} is a file, not a folder")
    if out.resolve() in (Path.cwd().resolve(), *Path.cwd().resolve().parents):
        raise OutputRefused(f"{out} is the working folder or above it: name a folder of its own")
    mine = (out / marker).is_file() and not (out / marker).is_symlink()
    if not mine and not force and any(out.iterdir()):
        raise OutputRefused(
            f"{out} is a non-empty folder prunereg did not write (no {marker} in it): "
            "choose another folder, or pass --force to replace it and everything in it"
        )


@contextmanager
def replaced_folder(out: Path, marker: str, force: bool = False) -> Iterator[Path]:
    """A fresh empty folder next to `out` to write into; it becomes `out` when the block ends without error."""
    out = Path(os.path.abspath(out))
    check_output(out, marker, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    fresh = out.parent / f".{out.name}.{secrets.token_hex(4)}.new"
    fresh.mkdir()
    try:
        yield fresh
        (fresh / marker).write_text("written by prunereg; replaced whole on the next write\n", encoding="utf-8")
        check_output(out, marker, force)  # it may have changed while we wrote
        if out.exists():
            old = out.parent / f".{out.name}.{secrets.token_hex(4)}.old"
            out.rename(old)
            fresh.rename(out)
            shutil.rmtree(old)
        else:
            fresh.rename(out)
    finally:
        if fresh.exists():
            shutil.rmtree(fresh)
