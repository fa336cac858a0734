"""Checks on what the CLI writes: every built page is valid, safe HTML5, and `prunereg export` runs as a user runs it."""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import pytest

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
SCRIPT_TAG = re.compile(r'<script src="(?:\.\./)?static/leaderboard\.js" defer></script>')
"""The one script a page may load: our own file, from the site itself."""


class Page(HTMLParser):
    """Records what a validity check needs; an unbalanced or mis-nested tag is an error."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.doctype: str | None = None
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.ids: Counter[str] = Counter()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.title = ""
        self.feed(text)
        self.close()
        self.errors += [f"unclosed <{t}>" for t in self.stack]

    def handle_decl(self, decl: str) -> None:
        self.doctype = decl

    def _record(self, tag: str, attrs: list[tuple[str, str | None]]) -> dict[str, str | None]:
        if self.doctype is None:
            self.errors.append(f"<{tag}> before the doctype")
        attributes = dict(attrs)
        self.tags.append((tag, attributes))
        identifier = attributes.get("id")
        if identifier is not None:
            self.ids[identifier] += 1
        return attributes

    def handle_starttag(self, tag, attrs):
        self._record(tag, attrs)
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self._record(tag, attrs)

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes <{self.stack[-1] if self.stack else 'nothing'}>")
        else:
            self.stack.pop()

    def handle_data(self, data):
        if self.stack and self.stack[-1] == "title" and "svg" not in self.stack:
            self.title += data


def check_html5_strict(text: str, path: Path) -> None:
    """html5lib's spec parser in strict mode: any parse error (mis-nesting, bad attribute) fails."""
    html5lib = pytest.importorskip("html5lib")
    try:
        html5lib.HTMLParser(strict=True, namespaceHTMLElements=False).parse(text)
    except html5lib.html5parser.ParseError as error:
        raise AssertionError(f"{path}: {error}") from error


def check_html5(path: Path) -> Page:
    text = path.read_text(encoding="utf-8")
    page = Page(text)
    check_html5_strict(text, path)
    assert page.doctype and page.doctype.lower() == "doctype html", path
    assert page.errors == [], (path, page.errors[:5])
    html = [attrs for tag, attrs in page.tags if tag == "html"]
    assert html and html[0].get("lang"), path
    assert any(tag == "meta" and (attrs.get("charset") or "").lower() == "utf-8" for tag, attrs in page.tags), path
    assert page.title.strip(), path
    assert [i for i, n in page.ids.items() if n > 1] == [], path
    scripts = [attrs for tag, attrs in page.tags if tag == "script"]
    assert len(scripts) == len(SCRIPT_TAG.findall(text)) <= 1, (path, scripts)  # no inline script, no other one
    for tag, attrs in page.tags:
        assert tag not in ("img", "iframe", "object", "embed"), (path, tag)
        assert not [a for a in attrs if a.startswith("on")], (path, tag, attrs)
        for name in ("src", "href"):
            link = attrs.get(name) or ""
            assert not link.lower().startswith("javascript:"), (path, link)
            if tag != "a":
                assert "://" not in link, f"{path} loads an external resource: {link}"
    return page


def export(path, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "prunereg.cli", "export", "--db", str(path), *args], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    return result.stdout
