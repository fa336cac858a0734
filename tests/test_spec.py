"""The submission schema and the semantic checks: what is accepted, what is refused and how it is said."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
from factories import claim

from prunereg.spec import checks
from prunereg.spec.adapters import adapters
from prunereg.spec.submission import Submission, json_schema
from prunereg.spec.validate import SCHEMA_FILE, validate_document, validate_file

ROOT = Path(__file__).resolve().parents[1]
SUBMISSIONS = sorted((ROOT / "submissions").glob("*.json"))
SHORTGPT = json.loads((ROOT / "submissions" / "shortgpt.json").read_text()) | {"quality_claims": []}
LLM_PRUNER = json.loads((ROOT / "submissions" / "llm-pruner.json").read_text()) | {"quality_claims": []}
"""Both without their claims: they name catalog models, on which each edited point would be checked too."""
DENSE = json.loads((ROOT / "submissions" / "dense.json").read_text())
CLAIMED = SHORTGPT | {"quality_claims": [claim("drop-25", 9.0, 5.5)]}


def claim_edit(**fields):
    """An edit of CLAIMED's claim: a field set, or removed where its value is None."""

    def edit(d):
        for name, value in fields.items():
            d["quality_claims"][0].pop(name) if value is None else d["quality_claims"][0].update({name: value})

    return edit


@pytest.mark.parametrize("path", SUBMISSIONS, ids=lambda p: p.name)
def test_every_shipped_submission_is_valid(path):
    submission, problems = validate_file(path)
    assert problems == [] and submission is not None


def test_committed_schema_is_generated_from_the_models():
    assert json.loads(SCHEMA_FILE.read_text()) == json_schema()
    assert json_schema()["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_schema_forbids_unknown_fields_everywhere():
    schema = json_schema()
    for name, definition in schema["$defs"].items():
        if definition.get("type") == "object":
            assert definition.get("additionalProperties") is False, name


def mutated(base: dict, edit) -> dict:
    document = copy.deepcopy(base)
    edit(document)
    return document


REJECTED = [
    ("unknown top-level field", SHORTGPT, lambda d: d.update(homepage="x"), "/homepage", "unknown field"),
    (
        "wrong type",
        SHORTGPT,
        lambda d: d["adapter"]["operating_points"][0]["params"].update(sparsity="half"),
        "/adapter/operating_points/0/params/sparsity",
        "not of type 'number'",
    ),
    (
        "out of range",
        SHORTGPT,
        lambda d: d["adapter"]["operating_points"][0]["params"].update(sparsity=1.5),
        "/adapter/operating_points/0/params/sparsity",
        "maximum",
    ),
    (
        "unknown adapter",
        SHORTGPT,
        lambda d: d["adapter"].update(name="layerdrop"),
        "/adapter/name",
        "did you mean 'layer_drop'",
    ),
    ("markup in a name", SHORTGPT, lambda d: d["method"].update(slug="<script>"), "/method/slug", "does not match"),
    (
        "markup in an author",
        SHORTGPT,
        lambda d: d["method"]["authors"].append('"><img src=x onerror=alert(1)>'),
        "/method/authors/8",
        "must not contain '<' or '>'",
    ),
    (
        "script url",
        SHORTGPT,
        lambda d: d["method"]["paper"].update(url="javascript:alert(1)"),
        "/method/paper/url",
        "does not match",
    ),
    ("overlong text", SHORTGPT, lambda d: d["method"].update(name="x" * 500), "/method/name", "longer than 120"),
    ("unknown GEMM", SHORTGPT, lambda d: d["effects"][0].update(gemm="qkv"), "/effects/0/gemm", "qkv_proj"),
    ("fraction above one", SHORTGPT, lambda d: d["effects"][0].update(fraction=2), "/effects/0/fraction", "maximum"),
    ("wrong schema version", SHORTGPT, lambda d: d.update(schema_version=2), "/schema_version", "1 was expected"),
    (
        "layers without explicit",
        SHORTGPT,
        lambda d: d["adapter"]["operating_points"][0]["params"].update(layers=[1, 2]),
        "/adapter/operating_points/0/params",
        "exactly when selection is 'explicit'",
    ),
    ("paper without id", SHORTGPT, lambda d: d["method"]["paper"].pop("arxiv"), "/method/paper", "arxiv id or url"),
    (
        "claim without the arXiv version",
        CLAIMED,
        lambda d: d["quality_claims"][0]["provenance"].update(arxiv="2403.03853"),
        "/quality_claims/0/provenance/arxiv",
        "2403.03853",
    ),
    (
        "claim without its row",
        CLAIMED,
        lambda d: d["quality_claims"][0]["provenance"].pop("row"),
        "/quality_claims/0/provenance",
        "'row' is a required property",
    ),
]


@pytest.mark.parametrize("label,base,edit,pointer,fragment", REJECTED, ids=[r[0] for r in REJECTED])
def test_schema_rejections_name_the_json_pointer(label, base, edit, pointer, fragment):
    submission, problems = validate_document(mutated(base, edit))
    assert submission is None
    assert any(p.pointer == pointer and fragment in p.message for p in problems), problems


CHECKED = [
    (
        checks.added_gemms_are_sized_by_hidden,
        SHORTGPT,
        lambda d: d["effects"].append(
            {"gemm": "shortcut_rotation", "dimension": "M", "mode": "static", "granularity": "layer", "fraction": 0.5}
        ),
        f"/effects/{len(SHORTGPT['effects'])}",
    ),
    (checks.claims_are_comparable, CLAIMED, claim_edit(base_model="opt-13b"), "/quality_claims/0/base_model"),
    (checks.claims_are_comparable, CLAIMED, claim_edit(higher_is_better=True), "/quality_claims/0/higher_is_better"),
    (checks.claims_are_comparable, CLAIMED, claim_edit(eval_length=None), "/quality_claims/0/eval_length"),
    (
        checks.claims_are_comparable,
        CLAIMED,
        claim_edit(task="zero-shot-average", metric="mean_accuracy", higher_is_better=True),
        "/quality_claims/0/tasks_averaged",
    ),
    (checks.claims_are_comparable, CLAIMED, claim_edit(tasks_averaged=["piqa"]), "/quality_claims/0/tasks_averaged"),
    (
        checks.unique_operating_points,
        SHORTGPT,
        lambda d: d["adapter"]["operating_points"][1].update(name="drop-25"),
        "/adapter/operating_points/1/name",
    ),
    (
        checks.operating_points_within_adapter_limit,
        DENSE,
        lambda d: d["adapter"]["operating_points"].append({"name": "again", "params": {}}),
        "/adapter/operating_points",
    ),
    (checks.adapter_fits_family, LLM_PRUNER, lambda d: d.update(family="static_depth"), "/adapter/name"),
    (checks.effects_fit_family, SHORTGPT, lambda d: d["effects"][0].update(dimension="N"), "/effects/0"),
    (checks.unique_effects, SHORTGPT, lambda d: d["effects"][1].update(gemm="qkv_proj"), "/effects/1"),
    (
        checks.effect_parameters_exist,
        SHORTGPT,
        lambda d: d["effects"][0].update(fraction={"param": "ratio"}),
        "/effects/0/fraction/param",
    ),
    (
        checks.claims_name_operating_points,
        SHORTGPT,
        lambda d: d.update(
            quality_claims=[
                {
                    "base_model": "llama-2-7b",
                    "operating_point": "drop-99",
                    "task": "wikitext2",
                    "metric": "perplexity",
                    "higher_is_better": False,
                    "value": 10.0,
                    "dense_value": 5.0,
                    "provenance": {"source": "measured", "by": "a test"},
                }
            ]
        ),
        "/quality_claims/0/operating_point",
    ),
    (
        checks.operating_points_fit_models,
        LLM_PRUNER,
        lambda d: d["adapter"]["operating_points"][0]["params"].update(attention_sparsity=0.3),
        "/adapter/operating_points/0/params",
    ),
    (
        checks.operating_points_fit_models,
        SHORTGPT,
        lambda d: d["adapter"]["operating_points"][0]["params"].update(selection="explicit", layers=[2, 9]),
        "/adapter/operating_points/0/params",
    ),
]


@pytest.mark.parametrize(
    "check,base,edit,pointer", CHECKED, ids=[f"{c[0].__name__}-{i}" for i, c in enumerate(CHECKED)]
)
def test_each_semantic_check_reports_its_problem(check, base, edit, pointer):
    assert check in checks.CHECKS
    document = mutated(base, edit)
    assert [p.pointer for p in check(Submission.model_validate(document))] == [pointer]
    submission, problems = validate_document(document)
    assert submission is None and pointer in [p.pointer for p in problems]


def test_grouped_query_misfit_names_model_and_groups():
    document = mutated(
        LLM_PRUNER, lambda d: d["adapter"]["operating_points"][0]["params"].update(attention_sparsity=0.3)
    )
    _, problems = validate_document(document)
    assert "on prunereg-mini" in problems[0].message and "whole number of groups" in problems[0].message


def test_slug_must_match_the_file_name(tmp_path):
    path = tmp_path / "other-name.json"
    path.write_text(json.dumps(SHORTGPT))
    _, problems = validate_file(path)
    assert problems == [checks.Problem("/method/slug", "slug 'shortgpt' must equal the file name 'other-name'")]


@pytest.mark.parametrize(
    "content,fragment",
    [
        ("{not json", "invalid JSON at line 1"),
        ('{"a": 1, "a": 2}', "duplicate key 'a'"),
        ("[]", "not of type 'object'"),
    ],
)
def test_unreadable_files_get_one_problem(tmp_path, content, fragment):
    path = tmp_path / "broken.json"
    path.write_text(content)
    _, problems = validate_file(path)
    assert len(problems) == 1 and fragment in problems[0].message


def run_cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "prunereg.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_cli_validate_prints_one_line_per_problem_and_exits_1(tmp_path):
    hostile = mutated(
        SHORTGPT,
        lambda d: (d.update(extra=1), d["method"].update(name="<b>ShortGPT</b>"), d["adapter"].update(name="rm -rf /")),
    )
    path = tmp_path / "shortgpt.json"
    path.write_text(json.dumps(hostile))
    result = run_cli("validate", str(path), str(ROOT / "submissions" / "dense.json"))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines == [
        f"{path}: /adapter/name: adapter 'rm -rf /' is not built in and no installed package provides it "
        f"(known: {', '.join(sorted(adapters()))})",
        f"{path}: /extra: unknown field",
        f"{path}: /method/name: must not contain '<' or '>'",
    ]
    assert "Traceback" not in result.stderr


def test_cli_validate_accepts_the_shipped_submissions_without_importing_torch():
    probe = (
        "import sys; from prunereg.cli import app\n"
        "try:\n    app(['validate', *sys.argv[1:]])\nexcept SystemExit as e:\n    code = e.code\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'validation imported torch'\n"
        "sys.exit(code)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, *map(str, SUBMISSIONS)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(": ok (") == len(SUBMISSIONS)


def test_cli_evaluate_refuses_a_bad_submission_and_writes_no_registry(tmp_path):
    path = tmp_path / "shortgpt.json"
    path.write_text(json.dumps(mutated(SHORTGPT, lambda d: d.update(family="unstructured"))))
    db = tmp_path / "registry.db"
    result = run_cli("evaluate", str(path), "--db", str(db))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"{path}: /adapter/name: adapter 'layer_drop' realizes family static_depth")
    assert not db.exists()


def test_spec_hash_ignores_formatting_and_spelled_out_defaults():
    """A field added later with a default must not re-key every stored submission."""
    base, _ = validate_document(SHORTGPT)
    spelled = mutated(SHORTGPT, lambda d: d["effects"][0]["fraction"].update(scale=1.0))
    other, _ = validate_document(spelled)
    assert base.spec_hash() == other.spec_hash()
    changed, _ = validate_document(mutated(SHORTGPT, lambda d: d["method"].update(name="ShortGPT v2")))
    assert changed.spec_hash() != base.spec_hash()


def test_cli_ingest_refuses_a_result_of_another_spec_in_one_line(tmp_path):
    saved = json.loads(next((ROOT / "results" / "h200-taxonomy").glob("shortgpt--*.json")).read_text())
    saved["result"]["spec_hash"] = "0" * 64
    path = tmp_path / "saved.json"
    path.write_text(json.dumps(saved))
    db = tmp_path / "registry.db"
    result = run_cli("ingest", str(path), "--db", str(db))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"{path}: /result/spec_hash: is not the embedded submission's hash "
        f"{Submission.model_validate(saved['submission']).spec_hash()[:12]}"
    ]
    assert not db.exists()
