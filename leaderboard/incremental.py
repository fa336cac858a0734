"""Incremental site writing: which pages an earlier build left that still hold, and writing the others.

A build's pages come in units (a group's pages, a method page). The manifest in the site folder keeps each
unit's content hash and files; a unit whose hash is unchanged and whose files are all there is kept, the
others are rendered (forked into a process per CPU when there are many) and each file is replaced whole.
Whatever the build neither wrote nor kept is removed, so the folder ends as a full build would leave it.
"""

from __future__ import annotations

import gc
import hashlib
import json
import multiprocessing
import os
import pickle
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from prunereg import __version__
from prunereg.outputs import SITE_MARKER
from prunereg.registry.pareto import SpeedupKind

HERE = Path(__file__).parent
MANIFEST = ".prunereg-manifest.json"
"""In the site folder: a content hash per page (or set of pages) and the files it wrote, for incremental rebuilds."""


def code_digest() -> str:
    """What the pages depend on besides the registry: this prunereg, its templates, static files and page code."""
    digest = hashlib.sha256(__version__.encode())
    for folder in (HERE, HERE / "templates", HERE / "static", HERE.parent / "registry"):
        for path in sorted(folder.iterdir()):
            if path.is_file() and path.suffix in (".py", ".html", ".js", ".css", ".svg"):
                digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def earlier_units(out_dir: Path, speedup: SpeedupKind) -> dict[str, Any] | None:
    """The pages of an earlier build by this same code and speedup axis, or None (then the build is a full one)."""
    path = out_dir / MANIFEST
    if out_dir.is_symlink() or not path.is_file() or path.is_symlink() or not (out_dir / SITE_MARKER).is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("code") != code_digest() or manifest.get("speedup") != speedup:
        return None
    units = manifest.get("units")
    return units if isinstance(units, dict) else None


class SiteWriter:
    """Writes the pages of one build; a unit (one page or a set of pages) whose hash is the earlier build's, with
    every file still there, is kept as it is."""

    def __init__(self, out_dir: Path, earlier: dict[str, Any]):
        self.out_dir = out_dir
        self.earlier = earlier
        self.units: dict[str, dict[str, Any]] = {}
        self.written: set[str] = set()
        self.jobs: list[tuple[str, str, Callable[[], dict[str, str]]]] = []
        self.rendered = 0
        self.rows = 0
        self.facts: dict[str, dict[str, Any]] = {}

    def earlier_facts(self, unit: str, files: bool = True) -> dict[str, Any] | None:
        """What the earlier build stored of this unit, if its files are still there."""
        before = self.earlier.get(unit)
        if not isinstance(before, dict) or not all((self.out_dir / f).is_file() for f in before.get("files", [])):
            return None
        return before

    def note(self, unit: str, **facts: Any) -> None:
        """Facts about a unit the next build reads back from the manifest instead of from the registry."""
        self.facts[unit] = facts

    def unchanged(self, unit: str, digest: str) -> bool:
        before = self.earlier.get(unit)
        if (
            isinstance(before, dict) and before.get("hash") == digest
            and all((self.out_dir / f).is_file() for f in before.get("files", []))
        ):  # fmt: skip
            self.units[unit] = before
            return True
        return False

    def write(self, unit: str, digest: str | None, files: dict[str, str]) -> None:
        write_files(self.out_dir, files)
        self.record(unit, digest, sorted(files))

    def record(self, unit: str, digest: str | None, names: list[str]) -> None:
        if digest is not None:
            self.units[unit] = {"hash": digest, "files": names}
        self.written.update(names)
        self.rendered += 1

    def later(self, unit: str, digest: str, files: Callable[[], dict[str, str]], rows: int = 0) -> None:
        """Render and write this unit (of so many rows) in `render_all`, perhaps in another process."""
        self.jobs.append((unit, digest, files))
        self.rows += rows

    def render_all(self, engine: Engine) -> None:
        """The units left for later: in a process per CPU where there are many (forked, so they share the rows
        read so far), else here."""
        jobs, self.jobs = self.jobs, []
        rows, self.rows = self.rows, 0
        workers = min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1, 4)
        many = len(jobs) >= PARALLEL_UNITS or (len(jobs) > 1 and rows >= PARALLEL_ROWS)
        if workers < 2 or not many or "fork" not in multiprocessing.get_all_start_methods():
            for unit, digest, files in jobs:
                self.write(unit, digest, files())
            return
        _FORKED[:] = [(self.out_dir, engine, jobs)]
        gc.freeze()  # the collector leaves the rows alone in the forked processes: their memory stays shared
        try:
            with multiprocessing.get_context("fork").Pool(workers, initializer=_forked) as pool:
                for unit, digest, names in pool.imap_unordered(_render, range(len(jobs))):
                    self.record(unit, digest, names)
        finally:
            gc.unfreeze()
            _FORKED.clear()

    def finish(self, speedup: SpeedupKind) -> None:
        """Remove every file this build did not write or keep (pages of groups and methods that are gone, anything
        put there by hand), as replacing the folder whole would, then write the manifest."""
        for unit, facts in self.facts.items():
            if unit in self.units:
                self.units[unit] = {**self.units[unit], **facts}
        kept = self.written | {f for u in self.units.values() for f in u["files"]} | {SITE_MARKER}
        for path in sorted(self.out_dir.rglob("*")):
            name = path.relative_to(self.out_dir).as_posix()
            if name not in kept and not name.startswith("static/") and (path.is_file() or path.is_symlink()):
                path.unlink()
        manifest = {"code": code_digest(), "speedup": speedup, "units": self.units}
        (self.out_dir / MANIFEST).write_text(json.dumps(manifest, sort_keys=True), encoding="utf-8")


PARALLEL_UNITS = 16
"""Pages to render from which a build forks a process per CPU to share the work."""
PARALLEL_ROWS = 5000
"""Rows on the pages to render from which a build forks a process per CPU, however few the pages."""
_FORKED: list[tuple[Path, Engine, list[tuple[str, str, Callable[[], dict[str, str]]]]]] = []
"""What a forked renderer finds in its copy of this module: the site folder, the registry and the units."""


def _forked() -> None:
    _FORKED[0][1].dispose(close=False)  # the parent's pooled connections are not this process's to use


def _render(i: int) -> tuple[str, str, list[str]]:
    out_dir, _, jobs = _FORKED[0]
    unit, digest, files = jobs[i]
    made = files()
    write_files(out_dir, made)
    return unit, digest, sorted(made)


def write_files(out_dir: Path, files: dict[str, str]) -> None:
    """Each file whole or not at all: written beside, then renamed over the earlier one."""
    for name, text in files.items():
        path = out_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, path)


def content_hash(*parts: Any) -> str:
    """A content hash of plain data (pickled: strings, numbers, tuples, lists and dicts pickle the same each time)."""
    return hashlib.sha256(pickle.dumps(parts, protocol=5)).hexdigest()
