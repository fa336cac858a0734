"""Build prunereg's austen-cloze task from the embedded corpus's held-out split (not installed).

Each example is a sentence of harness/embedded/eval.txt without its last word; the choices are
that word and three distractors, the last words of other sentences of the same split. Everything
is chosen by sha256 of fixed strings, so the file is the same on every machine and Python:

    python tools/austen_cloze.py            # rewrites harness/tasks/austen_cloze.jsonl
    python tools/austen_cloze.py --check    # fails if the shipped file differs

Only eval.txt is read: the train split (and the calibration stretches cut from it) never enter,
so the task scores text the model was not trained on.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EVAL_SPLIT = ROOT / "harness" / "embedded" / "eval.txt"
OUT = ROOT / "harness" / "tasks" / "austen_cloze.jsonl"

EXAMPLES = 300
CHOICES = 4
MIN_WORDS, MAX_WORDS = 8, 40
SENTENCE = re.compile(r"[^.!?]+[.!?]")
ABBREVIATIONS = ("Mr.", "Mrs.", "Dr.", "St.", "Esq.")
"""Titles whose full stop does not end a sentence."""
LAST_WORD = re.compile(r"^(?P<context>.*\S)\s+(?P<ending>[a-z]{3,})[.!?]$")
"""A lower-case, purely alphabetic last word of at least 3 letters: no names, numbers or stray punctuation."""


def _rank(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:8], "big")


def sentences(text: str) -> list[tuple[str, str]]:
    """(context, ending) of each usable sentence, in text order: 8 to 40 words, no quotation mark
    (a sentence that closes a speech would leave its ending to the quote)."""
    found = []
    for paragraph in text.split("\n"):
        pieces: list[str] = []
        for match in SENTENCE.finditer(paragraph):
            if pieces and pieces[-1].endswith(ABBREVIATIONS):
                pieces[-1] += match.group()
            else:
                pieces.append(match.group())
        for piece in pieces:
            sentence = " ".join(piece.split())
            parts = None if '"' in sentence else LAST_WORD.match(sentence)
            if parts and MIN_WORDS <= len(sentence.split()) <= MAX_WORDS and parts["context"][0].isupper():
                found.append((parts["context"], parts["ending"]))
    return found


def build(text: str, examples: int = EXAMPLES) -> list[dict]:
    """`examples` sentences chosen by hash (then kept in text order), each with 3 distractor endings
    drawn by hash from the other sentences' endings, and the true one at a hashed position."""
    usable = sentences(text)
    chosen = sorted(sorted(range(len(usable)), key=lambda i: _rank("example", *usable[i]))[:examples])
    pool = sorted({ending for _, ending in usable})
    docs = []
    for number, index in enumerate(chosen):
        context, ending = usable[index]
        distractors: list[str] = []
        draw = 0
        while len(distractors) < CHOICES - 1:
            candidate = pool[_rank("distractor", context, draw) % len(pool)]
            draw += 1
            if candidate != ending and candidate not in distractors:
                distractors.append(candidate)
        label = _rank("label", context) % CHOICES
        choices = distractors[:label] + [ending] + distractors[label:]
        docs.append({"id": number, "context": context, "choices": choices, "label": label})
    return docs


def render(docs: list[dict]) -> str:
    return "".join(json.dumps(doc, ensure_ascii=False, sort_keys=True) + "\n" for doc in docs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check that the shipped file is current")
    args = parser.parse_args()
    rendered = render(build(EVAL_SPLIT.read_text(encoding="utf-8")))
    if args.check:
        if not OUT.is_file() or OUT.read_text(encoding="utf-8") != rendered:
            print(f"{OUT} is out of date: run python tools/austen_cloze.py", file=sys.stderr)
            return 1
        print(f"{OUT} is current")
        return 0
    OUT.write_text(rendered, encoding="utf-8")
    print(f"wrote {OUT}: {rendered.count(chr(10))} examples")
    return 0


if __name__ == "__main__":
    sys.exit(main())
