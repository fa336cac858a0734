"""The published schemas in an independent validator: ajv 8, JSON Schema 2020-12, strict mode.

Tools outside Python read prunereg's files through spec/schema/*.schema.json, so the schemas must
compile where no pydantic quirk is forgiven: ajv's `ajv/dist/2020` with `strict: true` (no unknown
keyword, strict types, tuples and `required`) and its default unicode regular expressions. The
committed submissions and saved evaluations must pass both ajv and Python's jsonschema, and a broken
document must fail both at the same place.

ajv is pinned by tests/ajv/package-lock.json; `npm ci` installs it when tests/ajv/node_modules is
missing. The module skips only where node itself is absent.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from prunereg.spec.schemas import PUBLISHED, SCHEMA_DIR, rendered

ROOT = Path(__file__).parent.parent
AJV = Path(__file__).parent / "ajv"
SUBMISSION_SCHEMA = SCHEMA_DIR / "submission.schema.json"
RESULTS_SCHEMA = SCHEMA_DIR / "results.schema.json"
SUBMISSIONS = sorted((ROOT / "submissions").glob("*.json"))
SAVED_EVALUATIONS = sorted((ROOT / "results").glob("*/*--*.json"))


@pytest.fixture(scope="module")
def ajv():
    """Runs tests/ajv/check.mjs: compile one schema strictly, validate documents, answer in JSON."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the strict ajv check needs node 18 or newer and npm")
    if not (AJV / "node_modules" / "ajv").is_dir():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=AJV, check=True, capture_output=True)

    def check(schema: Path, *documents: Path) -> dict:
        run = subprocess.run(
            [node, str(AJV / "check.mjs"), str(schema), *map(str, documents)],
            capture_output=True, text=True, check=True, timeout=120,
        )  # fmt: skip
        return json.loads(run.stdout)

    return check


def python_errors(schema: Path, document: object) -> set[str]:
    """JSON pointers of Python jsonschema's errors, those inside a failed oneOf's branches included (as in ajv)."""
    validator = Draft202012Validator(json.loads(schema.read_text()))
    pointers, errors = set(), list(validator.iter_errors(document))
    while errors:
        error = errors.pop()
        pointers.add("/" + "/".join(map(str, error.absolute_path)))
        errors.extend(error.context or ())
    return pointers


def test_committed_schemas_are_generated_from_the_models():
    assert set(PUBLISHED) == {SUBMISSION_SCHEMA, RESULTS_SCHEMA}
    for path, text in rendered().items():
        assert path.read_text() == text, f"{path.name} is out of date: run `prunereg schema`"


@pytest.mark.parametrize("schema", [SUBMISSION_SCHEMA, RESULTS_SCHEMA], ids=lambda p: p.name)
def test_schema_compiles_in_strict_ajv(ajv, schema):
    answer = ajv(schema)
    assert answer["compiled"], answer.get("error")
    assert answer["warnings"] == []


@pytest.mark.parametrize("schema", [SUBMISSION_SCHEMA, RESULTS_SCHEMA], ids=lambda p: p.name)
def test_every_property_has_a_description(schema):
    missing = []

    def walk(node: object, where: str) -> None:
        if isinstance(node, dict):
            for name, sub in node.get("properties", {}).items():
                if not (isinstance(sub, dict) and sub.get("description")):
                    missing.append(f"{where}.{name}")
            for key, sub in node.items():
                walk(sub, f"{where}/{key}")
        elif isinstance(node, list):
            for i, sub in enumerate(node):
                walk(sub, f"{where}/{i}")

    walk(json.loads(schema.read_text()), "#")
    assert missing == []


def test_committed_submissions_pass_both_validators(ajv):
    assert SUBMISSIONS
    answer = ajv(SUBMISSION_SCHEMA, *SUBMISSIONS)
    assert answer["documents"] == {str(p): [] for p in SUBMISSIONS}
    for path in SUBMISSIONS:
        assert python_errors(SUBMISSION_SCHEMA, json.loads(path.read_text())) == set(), path.name


def test_committed_saved_evaluations_pass_both_validators(ajv):
    assert SAVED_EVALUATIONS
    answer = ajv(RESULTS_SCHEMA, *SAVED_EVALUATIONS)
    assert answer["documents"] == {str(p): [] for p in SAVED_EVALUATIONS}
    for path in SAVED_EVALUATIONS:
        assert python_errors(RESULTS_SCHEMA, json.loads(path.read_text())) == set(), path.name


def _set(document: dict, pointer: str, value: object) -> dict:
    """A copy of `document` with `value` at the JSON pointer (a new key where the last part is not there)."""
    document = copy.deepcopy(document)
    *parents, last = pointer.strip("/").split("/")
    node = document
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    node[last] = value
    return document


SHORTGPT = ROOT / "submissions" / "shortgpt.json"
BROKEN = [
    (SUBMISSION_SCHEMA, SHORTGPT, "/adapter/name", "layer_dorp"),
    (SUBMISSION_SCHEMA, SHORTGPT, "/method/paper/year", 1789),
    (SUBMISSION_SCHEMA, SHORTGPT, "/method/paper/url", 'https://example.org/"onload'),
    (SUBMISSION_SCHEMA, SHORTGPT, "/method/name", "<script>"),
    (SUBMISSION_SCHEMA, SHORTGPT, "/adapter/operating_points/0/params/sparsity", 2.0),
    (SUBMISSION_SCHEMA, SHORTGPT, "/method/unknown", True),
    (RESULTS_SCHEMA, SAVED_EVALUATIONS[0], "/result/points/0/latency/0/median", -1.0),
    (RESULTS_SCHEMA, SAVED_EVALUATIONS[0], "/result/environment/dtype", "int4"),
    (RESULTS_SCHEMA, SAVED_EVALUATIONS[0], "/schema_version", 2),
]
"""(schema, committed file, pointer, value): the file with one value broken."""


@pytest.fixture(scope="module")
def ajv_refusals(ajv, tmp_path_factory) -> dict[tuple[Path, str], set[str]]:
    """ajv's error pointers for each BROKEN document; one node run per schema."""
    folder = tmp_path_factory.mktemp("broken")
    by_schema: dict[Path, list[tuple[str, Path]]] = {}
    for i, (schema, base, pointer, value) in enumerate(BROKEN):
        (path := folder / f"{i}.json").write_text(json.dumps(_set(json.loads(base.read_text()), pointer, value)))
        by_schema.setdefault(schema, []).append((pointer, path))
    refusals = {}
    for schema, documents in by_schema.items():
        answer = ajv(schema, *(path for _, path in documents))["documents"]
        for pointer, path in documents:
            refusals[schema, pointer] = {e["pointer"] or "/" for e in answer[str(path)]}
    return refusals


@pytest.mark.parametrize(
    "schema, base, pointer, value", BROKEN, ids=[f"{s.name.split('.')[0]}{p}" for s, _, p, _ in BROKEN]
)
def test_both_validators_refuse_at_the_same_place(ajv_refusals, schema, base, pointer, value):
    where = pointer.rsplit("/", 1)[0] if pointer.endswith("/unknown") else pointer  # an unknown field: its object
    assert where in ajv_refusals[schema, pointer]
    assert where in python_errors(schema, _set(json.loads(base.read_text()), pointer, value))
