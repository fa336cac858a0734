"""The published JSON Schemas: a submission and a saved evaluation, generated from the pydantic models.

Both are JSON Schema 2020-12 that a strict validator in another language compiles as they are (ajv 8 in
strict mode: tests/test_schema_strict.py), so tools outside Python can read and check prunereg's files.
`prunereg schema` writes them; `prunereg schema --check` fails when a model changed and they did not.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from pydantic import ConfigDict, Field

from .results import SavedEvaluation
from .submission import BuiltInSubmission, json_schema, published

SCHEMA_DIR = Path(__file__).parent / "schema"
RESULTS_SCHEMA_VERSION: int = SavedEvaluation.model_fields["schema_version"].default
RESULTS_SCHEMA_ID = f"urn:prunereg:schema:results:{RESULTS_SCHEMA_VERSION}"


class BuiltInSavedEvaluation(SavedEvaluation):
    # A saved evaluation as the committed schema documents it: its submission names a built-in adapter,
    # so plugin packages installed where `prunereg schema` runs never change the published file.
    __doc__ = SavedEvaluation.__doc__
    model_config = ConfigDict(title="SavedEvaluation")
    submission: BuiltInSubmission = Field(description=SavedEvaluation.model_fields["submission"].description)


def results_json_schema() -> dict:
    """The schema of a saved evaluation (`prunereg evaluate --save`, the files under results/)."""
    return published(BuiltInSavedEvaluation, RESULTS_SCHEMA_ID)


PUBLISHED: dict[Path, Callable[[], dict]] = {
    SCHEMA_DIR / "submission.schema.json": json_schema,
    SCHEMA_DIR / "results.schema.json": results_json_schema,
}


def rendered() -> dict[Path, str]:
    """Each published schema file and the text it should have."""
    return {path: json.dumps(generate(), indent=2) + "\n" for path, generate in PUBLISHED.items()}
