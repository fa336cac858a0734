"""Validate a submission file: JSON, then the JSON Schema, then pydantic, then the semantic checks.

Every problem comes back as (JSON pointer, one-line message); the CLI prints `FILE: pointer: message`.
Validation never imports torch, so a contributor's CI check takes well under a second.
"""

from __future__ import annotations

import difflib
import json
from collections import Counter
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any, cast

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError as SchemaError
from jsonschema.exceptions import best_match
from pydantic import ValidationError

from .adapters import BUILT_IN, adapters
from .checks import CHECKS, Problem
from .jsonfile import JsonFileError, read_json
from .submission import NO_MARKUP, Submission, json_schema

SCHEMA_FILE = Path(__file__).parent / "schema" / "submission.schema.json"
MAX_BYTES = 1_000_000
MAX_MESSAGE = 240


@cache
def validator() -> Draft202012Validator:
    """The committed schema; where plugin packages add adapters, the same schema generated with them."""
    plugins = set(adapters()) - {row.name for row in BUILT_IN}
    return Draft202012Validator(json_schema(installed=True) if plugins else json.loads(SCHEMA_FILE.read_text()))


SUPERSEDED = "superseded"
"""Under the submissions folder, `superseded/<slug>/<spec hash, 12 hex>.json`: earlier versions of a
submission, verbatim, kept because results measured with them stay valid measurements of that version."""


def validate_file(path: Path) -> tuple[Submission | None, list[Problem]]:
    """The loaded submission (None if invalid) and every problem found."""
    try:
        document = read_json(path, MAX_BYTES)
    except JsonFileError as err:
        return None, [Problem("", str(err))]
    submission, problems = validate_document(document)
    if submission is None:
        return None, problems
    if path.parent.parent.name == SUPERSEDED:
        if submission.method.slug != path.parent.name:
            problems.append(
                Problem(
                    "/method/slug", f"slug '{submission.method.slug}' must equal the folder name '{path.parent.name}'"
                )
            )
        elif path.stem != submission.spec_hash()[:12]:
            problems.append(
                Problem("", f"a superseded version is named by its spec hash: {submission.spec_hash()[:12]}.json")
            )
    elif submission.method.slug != path.stem:
        problems.append(
            Problem("/method/slug", f"slug '{submission.method.slug}' must equal the file name '{path.stem}'")
        )
    return (None if problems else submission), problems


def validate_document(document: object) -> tuple[Submission | None, list[Problem]]:
    problems = sorted({p for e in validator().iter_errors(document) for p in _schema_problems(e)})
    if problems:
        return None, problems
    try:
        submission = Submission.model_validate(document)
    except ValidationError as err:
        return None, [
            Problem(_pointer_from_loc(document, e["loc"]), _one_line(e["msg"].removeprefix("Value error, ")))
            for e in err.errors()
        ]
    problems = [p._replace(message=_one_line(p.message)) for check in CHECKS for p in check(submission)]
    return (None if problems else submission), problems


def _schema_problems(error: SchemaError) -> list[Problem]:
    """Problems of one schema error; a failed oneOf reports the branch its discriminator picked."""
    if error.validator == "oneOf" and isinstance(error.instance, dict):
        branches = _branch_errors(error)
        tag_name = _discriminator(branches)
        if tag_name:
            tag = error.instance.get(tag_name)
            for errors in branches:
                if tag_name not in _const_refusals(errors):
                    return [p for e in errors for p in _schema_problems(e)]
            known = sorted(str(_const_refusals(errors)[tag_name]) for errors in branches)
            hint = difflib.get_close_matches(str(tag), known, n=1)
            suggestion = f"; did you mean '{hint[0]}'?" if hint else ""
            pointer = _pointer([*error.absolute_path, tag_name])
            unknown = f"unknown {tag_name} {_short(tag)}"
            if pointer == "/adapter/name":
                unknown = f"adapter {_short(tag)} is not built in and no installed package provides it"
            return [Problem(pointer, f"{unknown} (known: {', '.join(known)}){suggestion}")]
    if error.validator in ("anyOf", "oneOf") and error.context:
        matching_type = [e for e in error.context if not (e.validator == "type" and not e.relative_path)]
        return _schema_problems(best_match(matching_type or error.context))
    if error.validator == "additionalProperties":
        properties = error.schema.get("properties", {}) if isinstance(error.schema, Mapping) else {}
        extra = sorted(set(cast(dict, error.instance)) - set(properties))
        return [Problem(_pointer([*error.absolute_path, k]), "unknown field") for k in extra]
    return [Problem(_pointer(error.absolute_path), _one_line(_message(error)))]


def _message(error: SchemaError) -> str:
    """jsonschema's message, without echoing a long (possibly hostile) value back in full."""
    rule, value = error.validator, cast(Any, error.validator_value)
    if rule == "maxLength":
        return f"longer than {value} characters"
    if rule == "minLength":
        return "must not be empty" if value == 1 else f"shorter than {value} characters"
    if rule == "pattern" and value == NO_MARKUP:
        return "must not contain '<' or '>'"
    if rule == "pattern":
        return f"{_short(error.instance)} does not match the pattern {value}"
    if rule == "enum":
        hint = difflib.get_close_matches(str(error.instance), [str(v) for v in value], n=1)
        suggestion = f"; did you mean '{hint[0]}'?" if hint else ""
        return f"{_short(error.instance)} is not one of: {', '.join(map(str, value))}{suggestion}"
    return error.message.replace(repr(error.instance), _short(error.instance))


def _branch_errors(error: SchemaError) -> list[list[SchemaError]]:
    """The errors of a failed oneOf, one list per branch."""
    branches: dict[int, list[SchemaError]] = {}
    for sub in error.context or []:
        branches.setdefault(int(sub.relative_schema_path[0]), []).append(sub)
    return list(branches.values())


def _const_refusals(errors: list[SchemaError]) -> dict[str, object]:
    """Top-level properties of the instance that a branch refused by `const`, with the constant it wanted."""
    return {
        str(e.relative_path[0]): e.validator_value
        for e in errors
        if e.validator == "const" and len(e.relative_path) == 1
    }


def _discriminator(branches: list[list[SchemaError]]) -> str | None:
    """The tag of a tagged union (pydantic's discriminator): the property all branches but the one it names refused.

    pydantic's `discriminator` is OpenAPI, not JSON Schema, so the published schema leaves it out and each
    branch only fixes the tag with a `const`; a failed oneOf's errors still show which property that is.
    """
    if len(branches) < 2:
        return None
    refused = Counter(name for errors in branches for name in _const_refusals(errors))
    tags = [name for name, count in refused.items() if count >= len(branches) - 1]
    return tags[0] if len(tags) == 1 else None


def _pointer(parts) -> str:
    return "/" + "/".join(str(p).replace("~", "~0").replace("/", "~1") for p in parts) if parts else "/"


def _pointer_from_loc(document: object, loc: tuple) -> str:
    """pydantic's error location as a JSON pointer, skipping the union tags it inserts."""
    parts, node = [], document
    for key in loc:
        if isinstance(node, dict) and key in node:
            node = node[key]
        elif isinstance(node, list) and isinstance(key, int) and key < len(node):
            node = node[key]
        else:
            continue
        parts.append(key)
    return _pointer(parts)


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _one_line(message: str) -> str:
    message = " ".join(message.split())
    return message if len(message) <= MAX_MESSAGE else message[: MAX_MESSAGE - 3] + "..."
