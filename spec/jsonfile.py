"""Read one JSON input file safely: every file prunereg reads from a contributor goes through `read_json`.

A contributor's file is untrusted, so reading it is bounded before anything parses it: a regular
file only (no symlink, fifo, device or folder; opened without following links and without
blocking), at most `max_bytes`, strict UTF-8 without a byte-order mark, no duplicate keys, no
NaN/Infinity literals or numbers that overflow to infinity, no integers longer than 20 digits,
no lone surrogates, and at most `max_depth` levels of nesting. Every failure is one
`JsonFileError` whose message is one line.
"""

from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path

MAX_DEPTH = 32
MAX_INT_DIGITS = 20


class JsonFileError(ValueError):
    """Why a file is not acceptable JSON, in one line."""


def read_json(path: Path, max_bytes: int, max_depth: int = MAX_DEPTH, *, follow_symlinks: bool = False) -> object:
    """The parsed document of `path`, or JsonFileError."""
    text = _decode(read_bytes(path, max_bytes, follow_symlinks=follow_symlinks))
    try:
        document = json.loads(
            text, object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constant, parse_float=_finite,
            parse_int=_bounded_int,
        )  # fmt: skip
    except json.JSONDecodeError as err:
        raise JsonFileError(f"invalid JSON at line {err.lineno} column {err.colno}: {err.msg}") from None
    except RecursionError:
        raise JsonFileError(f"nested deeper than {max_depth} levels") from None
    _check_tree(document, max_depth)
    return document


def read_bytes(path: Path, max_bytes: int, *, follow_symlinks: bool = False) -> bytes:
    """The bytes of a regular file of at most `max_bytes`; special files are refused, and so are
    symlinks unless `follow_symlinks` (then the file linked to must be regular)."""
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | (0 if follow_symlinks else os.O_NOFOLLOW)
    try:
        if not follow_symlinks and stat.S_ISLNK(os.lstat(path).st_mode):
            raise JsonFileError("is a symbolic link; give the file itself")
        fd = os.open(path, flags)
    except OSError as err:
        raise JsonFileError(f"cannot open: {err.strerror or err}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = "a folder" if stat.S_ISDIR(mode) else "not a regular file (a fifo, socket or device)"
            raise JsonFileError(f"is {kind}")
        with os.fdopen(fd, "rb", closefd=False) as handle:
            data = handle.read(max_bytes + 1)
    except OSError as err:
        raise JsonFileError(f"cannot read: {err.strerror or err}") from None
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise JsonFileError(f"larger than {max_bytes} bytes")
    return data


def _decode(data: bytes) -> str:
    if not data.strip():
        raise JsonFileError("empty file")
    if data.startswith((b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")):
        raise JsonFileError("starts with a byte-order mark; save it as UTF-8 without BOM")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise JsonFileError(f"not valid UTF-8 at byte {err.start}") from None


def _no_duplicate_keys(pairs: list[tuple[str, object]]) -> dict:
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise JsonFileError(f"duplicate key {short(key)} in one object")
        seen.add(key)
    return dict(pairs)


def _no_constant(name: str) -> object:
    raise JsonFileError(f"{name} is not a JSON number")


def _finite(literal: str) -> float:
    value = float(literal)
    if not math.isfinite(value):
        raise JsonFileError(f"number {short(literal)} is out of range")
    return value


def _bounded_int(literal: str) -> int:
    if len(literal.lstrip("-")) > MAX_INT_DIGITS:
        raise JsonFileError(f"integer {short(literal)} has more than {MAX_INT_DIGITS} digits")
    return int(literal)


def _check_tree(document: object, max_depth: int) -> None:
    """Depth and lone surrogates (valid JSON escapes, but not Unicode text), walked without recursion."""
    stack: list[tuple[object, int]] = [(document, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (dict, list)):
            if depth > max_depth:
                raise JsonFileError(f"nested deeper than {max_depth} levels")
            items = [*node.keys(), *node.values()] if isinstance(node, dict) else node
            stack.extend((item, depth + 1) for item in items)
        elif isinstance(node, str) and not _is_unicode(node):
            raise JsonFileError(f"string {short(node)} holds a lone surrogate (\\ud800-\\udfff), which is not text")


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def short(value: object) -> str:
    text = ascii(value)
    return text if len(text) <= 60 else text[:57] + "..."
