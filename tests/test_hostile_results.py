"""`prunereg ingest` is a trust boundary: hostile results files, through the real CLI, on both back ends.

Every variant starts from one genuine saved evaluation (the shared factories, statistics and roofline
times made as the harness makes them) and breaks one thing. Each must exit 1 with one
`FILE: /pointer: message` line per problem, no traceback, and the registry exactly as it was (SQLite:
file bytes after a WAL checkpoint; both: every table's rows). Accepted files still ingest.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from backends import BACKENDS, backend_url
from factories import default_effects, make_environment, make_result, make_submission
from hostile import dump, sqlite_bytes
from sqlalchemy import create_engine, text
from typer.testing import CliRunner

from prunereg.cli import app
from prunereg.spec.catalog import Scenario, devices, models
from prunereg.spec.costmodel import estimate
from prunereg.spec.effects import resolve
from prunereg.spec.results import SavedEvaluation, latency_summary
from prunereg.spec.submission import Submission

ROOT = Path(__file__).resolve().parents[1]
SLUG = "shortgpt-test"
LINE = re.compile(r"^(?P<file>.+?): (?P<pointer>/\S*): (?P<message>.+)$")
Document = dict[str, Any]
DENSE_SPREAD = (0.97, 0.99, 1.0, 1.02, 1.05)  # genuine dense samples: as many as the pruned ones


def genuine(
    samples: tuple[float, ...] = (9.7, 10.0, 10.2, 10.4, 11.0), sub: Submission | None = None, **environment: Any
) -> Document:
    """A saved evaluation as `prunereg evaluate --save` writes it: summaries of its samples, roofline times."""
    sub = sub or make_submission(SLUG)
    result = make_result(sub, environment=make_environment(**environment)).model_dump(mode="json")
    arch, device = models()[result["model"]], devices()["h200"]
    for point, declared in zip(result["points"], sub.adapter.operating_points):
        effects = resolve(sub.effects, declared.params_for(result["model"]), arch)
        for i, latency in enumerate(point["latency"]):
            scenario = Scenario.model_validate(latency["scenario"])
            pruned = [s * (1 + 0.1 * i) for s in samples]
            dense = latency["dense_median"]
            latency.update(samples=pruned, **latency_summary(pruned), dense_samples=[dense * f for f in DENSE_SPREAD])
            latency["theoretical"] = estimate(arch, device, scenario, effects).time_ms
            latency["theoretical_dense"] = estimate(arch, device, scenario, ()).time_ms
    saved = SavedEvaluation.model_validate({"submission": sub.model_dump(mode="json"), "result": result})
    return saved.model_dump(mode="json")


def write(folder: Path, name: str, content: Document | bytes | str) -> Path:
    path = folder / name
    if isinstance(content, dict):
        content = json.dumps(content)
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


@pytest.fixture(scope="module")
def submissions(tmp_path_factory) -> Path:
    """The registered submissions: the one every genuine results file embeds."""
    folder = tmp_path_factory.mktemp("submissions")
    write(folder, f"{SLUG}.json", make_submission(SLUG).model_dump(mode="json", exclude_defaults=True))
    return folder


def ingest(db: str, submissions: Path, *files: Path):
    return CliRunner().invoke(app, ["ingest", *map(str, files), "--db", db, "--submissions", str(submissions)])


@pytest.fixture(scope="module", params=BACKENDS)
def registry(request, tmp_path_factory, submissions):
    """A registry holding one genuine ingestion; every refused variant must leave it byte for byte."""
    folder = tmp_path_factory.mktemp("registry")
    with backend_url(request.param, folder) as url:
        result = ingest(url, submissions, write(folder, "genuine.json", genuine()))
        assert result.exit_code == 0, result.output
        yield url


def edit(change: Callable[[Document], Any]) -> Callable[[Path], Path]:
    """A variant that edits the genuine document (the change may mutate it or return a replacement)."""

    def make(folder: Path) -> Path:
        document = genuine()
        replaced = change(document)
        return write(folder, "hostile.json", document if replaced is None else replaced)

    return make


def raw(content: bytes | str) -> Callable[[Path], Path]:
    return lambda folder: write(folder, "hostile.json", content)


def text_edit(old: str, new: str) -> Callable[[Path], Path]:
    """A variant made on the JSON text, for what json.dumps cannot write (NaN literals, duplicate keys)."""

    def make(folder: Path) -> Path:
        source = json.dumps(genuine())
        assert old in source
        return write(folder, "hostile.json", source.replace(old, new, 1))

    return make


def latency(document: Document, point: int = 0, scenario: int = 0) -> Document:
    return document["result"]["points"][point]["latency"][scenario]


def put(path: str, value: Any) -> Callable[[Document], None]:
    """Set the value at a JSON pointer of the genuine document."""

    def change(document: Document) -> None:
        parent, last = path.rsplit("/", 1)
        node: Any = get(document, parent) if parent else document
        node[int(last) if isinstance(node, list) else last] = value

    return change


LAT = "/result/points/0/latency/0"
ENV = "/result/environment"
CAL = "/result/points/0/calibration"
RECORD = {"dataset": "embedded-train", "sequences": 32, "length": 256, "seed": 0, "tokens": 8192, "seconds": 1.4}
WEIGHTS = {"name": "model.safetensors", "size": 4_000_000, "sha256": "28c740055a0ed7c7" + "0" * 48}
CHECKPOINT = {"path": "checkpoints/drop-25", "base": "prunereg-mini", "files": [WEIGHTS]}


def _scaled(field: str, factor: float) -> Callable[[Document], None]:
    def change(document: Document) -> None:
        latency(document)[field] *= factor

    return change


def _samples(document: Document, samples: list[float]) -> None:
    latency(document).update(samples=samples, **latency_summary(samples))


def duplicated(path: str) -> Callable[[Document], None]:
    """The list at `path` with its second item replaced by a copy of its first."""
    return lambda document: put(f"{path}/1", json.loads(json.dumps(get(document, f"{path}/0"))))(document)


def get(document: Document, path: str) -> Any:
    for part in path.strip("/").split("/"):
        document = document[int(part)] if isinstance(document, list) else document[part]
    return document


def resubmitted(change: Callable[[Document], None]) -> Callable[[Document], None]:
    """Edit the embedded submission and re-hash it, as a forger would, so only the registry can tell."""

    def forge(document: Document) -> None:
        change(document["submission"])
        points = {**document["result"], "points": []}
        saved = SavedEvaluation.model_validate({**document, "result": points})
        document["result"]["spec_hash"] = saved.submission.spec_hash()

    return forge


def _latin1(folder: Path) -> Path:
    document = genuine()
    document["result"]["environment"]["device_name"] = "Tésla"
    return write(folder, "hostile.json", json.dumps(document, ensure_ascii=False).encode("latin-1"))


def not_a_file(kind: str) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        path = folder / "hostile.json"
        if kind == "symlink":  # to a genuine file: the link itself is what is refused
            path.symlink_to(write(folder, "target.json", genuine(git_revision="symlinked")))
        elif kind == "fifo":
            os.mkfifo(path)
        else:
            path.mkdir()
        return path

    return make


def _conflicting(folder: Path, name: str, scale: float) -> Path:
    """A genuine file of the same point and environment with other numbers: acceptable on its own."""
    return write(folder, name, genuine(samples=tuple(s * scale for s in (9.7, 10.0, 10.2, 10.4, 11.0))))


VARIANTS: dict[str, Callable[[Path], Path | list[Path]]] = {  # each makes the files to ingest
    # non-finite and out-of-range numbers
    "nan-median": text_edit('"median": ', '"median": NaN, "x": '),
    "infinity-sample": text_edit('"samples": [', '"samples": [Infinity, '),
    "minus-infinity-dense": text_edit('"dense_median": ', '"dense_median": -Infinity, "y": '),
    "overflow-1e400": text_edit('"theoretical": ', '"theoretical": 1e400, "z": '),
    "negative-sample": edit(lambda d: _samples(d, [-1.0, 10.0, 11.0])),
    "zero-median": edit(put(f"{LAT}/median", 0.0)),
    "median-over-an-hour": edit(lambda d: _samples(d, [1e9, 1e9, 1e9])),
    "thirty-digit-integer": text_edit('"tokens": 65536', '"tokens": 123456789012345678901234567890'),
    "quality-1e30": edit(put("/result/points/0/quality/0/value", 1e30)),
    "temperature-1000": edit(put(f"{LAT}/gpu_before", {"sm_clock_mhz": 1980, "memory_clock_mhz": 3201, "temperature_c": 1000})),
    "negative-power": edit(put(f"{LAT}/gpu_after", {"sm_clock_mhz": 1, "memory_clock_mhz": 1, "temperature_c": 40, "power_w": -5})),
    "negative-parameters": edit(put("/result/points/0/stats/parameters", -1)),
    "nonzero-above-parameters": edit(put("/result/dense_stats/nonzero_parameters", 10**12)),
    "zero-threads": edit(put(f"{ENV}/threads", 0)),
    "boolean-as-number": edit(put(f"{LAT}/median", True)),
    # statistics that are not their samples'
    "median-not-of-samples": edit(_scaled("median", 1.01)),
    "p20-above-median": edit(lambda d: latency(d).update(p20=latency(d)["median"] * 1.1)),
    "p80-below-median": edit(lambda d: latency(d).update(p80=latency(d)["median"] * 0.9)),
    "p20-not-of-samples": edit(_scaled("p20", 0.999)),
    "p80-not-of-samples": edit(_scaled("p80", 1.001)),
    "two-samples": edit(lambda d: _samples(d, [10.0, 10.5])),
    "thousand-and-one-samples": edit(lambda d: _samples(d, [10.0 + i / 1000 for i in range(1001)])),
    "ten-million-samples": raw(b'{"submission": {}, "result": {"points": [{"latency": [{"samples": [' + b"1.0," * 10_000_000 + b"1.0]}]}]}}"),
    # forged speedups and theoretical times
    "speedup-field": edit(put(f"{LAT}/speedup", 9.0)),
    "dense-median-not-of-dense-samples": edit(lambda d: latency(d).update(dense_samples=[12.0, 12.1, 12.2, 12.3, 12.4])),
    "fewer-dense-than-pruned-samples": edit(lambda d: latency(d).update(dense_samples=[latency(d)["dense_median"]] * 3)),
    "theoretical-halved": edit(_scaled("theoretical", 0.5)),
    "theoretical-dense-doubled": edit(_scaled("theoretical_dense", 2.0)),
    "theoretical-off-by-1e-4": edit(_scaled("theoretical", 1.0001)),
    "model-not-in-catalog": edit(put("/result/model", "my-own-model")),
    "unknown-device-profile": edit(put(f"{ENV}/device_profile", "h9000")),
    "float32-priced-as-bf16": edit(put(f"{ENV}/dtype", "float32")),
    # inconsistent with the declaration
    "effects-changed": edit(put("/result/points/0/effects/0/fraction", 0.75)),
    "effects-removed": edit(put("/result/points/0/effects", [])),
    "wrong-spec-hash": edit(put("/result/spec_hash", "0" * 64)),
    "spec-hash-not-hex": edit(put("/result/spec_hash", "Z" * 64)),
    "unknown-operating-point": edit(put("/result/points/0/operating_point", "drop-99")),
    "point-measured-twice": edit(duplicated("/result/points")),
    "scenario-measured-twice": edit(duplicated("/result/points/0/latency")),
    "quality-given-twice": edit(lambda d: get(d, "/result/points/0/quality").append(get(d, "/result/points/0/quality/0"))),
    "random-weights-with-quality": edit(put("/result/weights", "random")),
    "unknown-quality-task": edit(put("/result/points/0/quality/0/task", "my-own-benchmark")),
    "quality-direction-flipped": edit(put("/result/points/0/quality/0/higher_is_better", True)),
    "quality-metric-renamed": edit(put("/result/points/0/quality/0/metric", "perplexity")),
    "quality-task-version-invented": edit(put("/result/points/0/quality/0/task_version", "9")),
    "quality-shots-on-a-zero-shot-task": edit(lambda d: get(d, "/result/points/0/quality/0").update(task="austen-cloze", metric="acc", higher_is_better=True, shots=5)),
    "fallback-without-leaving-the-mode": edit(put(f"{LAT}/fallback", "it felt like it")),
    "unit-seconds": edit(put(f"{LAT}/unit", "s")),
    "calibration-where-none-is-needed": edit(put(CAL, RECORD)),
    "calibration-seconds-negative": edit(put(CAL, {**RECORD, "seconds": -1.0})),
    "calibration-of-another-set": edit(put(CAL, {**RECORD, "dataset": "wikitext2-test"})),
    "checkpoint-where-none-is-loaded": edit(put("/result/points/0/checkpoint", CHECKPOINT)),
    "stand-in-on-trained-weights": edit(put("/result/points/0/stand_in", "deepest")),
    "stand-in-not-a-selection-name": edit(put("/result/points/0/stand_in", "deepest; drop table runs")),
    "checkpoint-sha256-not-hex": edit(put("/result/points/0/checkpoint", {**CHECKPOINT, "files": [{**WEIGHTS, "sha256": "z" * 64}]})),
    # edited embedded submissions
    "renamed-method": edit(resubmitted(put("/method/name", "Hijacked"))),
    "other-authors": edit(resubmitted(put("/method/authors", ["Mallory"]))),
    "changed-params": edit(resubmitted(put("/adapter/operating_points/0/params/sparsity", 0.3))),
    "unregistered-slug": edit(resubmitted(put("/method/slug", "not-registered"))),
    "extra-submission-field": edit(put("/submission/method/homepage", "https://example.org")),
    "schema-version-2": edit(put("/schema_version", 2)),
    "nul-in-submission-description": edit(resubmitted(put("/method/description", "ok\u0000DROP TABLE methods"))),
    # oversized fields and files
    "fifty-megabyte-string": raw(b'{"result": {"model": "' + b"a" * 50_000_000 + b'"}}'),
    "ten-thousand-character-device-name": edit(put(f"{ENV}/device_name", "x" * 10_000)),
    "megabyte-kernel-name": edit(put("/result/points/0/gemms", [{"gemm": "o_proj", "count": 1, "m": 1, "n": 1, "k": 1, "flops": 2, "effective_flops": 2, "kernel": "k" * 1_000_000}])),
    "ten-thousand-throttle-reasons": edit(put(f"{LAT}/gpu_before", {"sm_clock_mhz": 1, "memory_clock_mhz": 1, "temperature_c": 40, "clock_event_reasons": ["x"] * 10_000})),
    "long-torch-version": edit(put(f"{ENV}/torch", "2." + "1" * 100)),
    "empty-device-name": edit(put(f"{ENV}/device_name", "")),
    # control characters
    "nul-in-device-name": edit(put(f"{ENV}/device_name", "NVIDIA\u0000H200")),
    "newline-in-fallback": edit(lambda d: latency(d).update(execution="graph", fallback="line one\nline two")),
    "escape-in-task": edit(put("/result/points/0/quality/0/task", "heldout\u001b[31m-ppl")),
    "c1-control-in-git-revision": edit(put(f"{ENV}/git_revision", "abc\u0085def")),
    "delete-in-driver": edit(put(f"{ENV}/driver", "570\u007f")),
    # duplicate keys
    "duplicate-top-level-key": text_edit('{"schema_version": 1, ', '{"schema_version": 1, "schema_version": 1, '),
    "duplicate-nested-key": text_edit('"median": ', '"median": 1.0, "median": '),
    # wrong encodings and malformed JSON
    "latin-1": _latin1,
    "utf-16-with-bom": lambda folder: write(folder, "hostile.json", json.dumps(genuine()).encode("utf-16")),
    "utf-16-le-without-bom": lambda folder: write(folder, "hostile.json", json.dumps(genuine()).encode("utf-16-le")),
    "utf-8-bom": lambda folder: write(folder, "hostile.json", b"\xef\xbb\xbf" + json.dumps(genuine()).encode()),
    "lone-high-surrogate": text_edit('"device_name": "NVIDIA H200"', '"device_name": "NVIDIA \\ud800"'),
    "lone-low-surrogate-key": text_edit('"threads": ', '"\\udc00": 1, "threads": '),
    "empty-file": raw(b""),
    "whitespace-only": raw(b"  \n\t "),
    "binary": raw(bytes(range(256)) * 4),
    "truncated": lambda folder: write(folder, "hostile.json", json.dumps(genuine())[:5000]),
    "top-level-array": raw(b"[1, 2, 3]"),
    "top-level-null": raw(b"null"),
    "nested-100000-deep": raw("[" * 100_000 + "]" * 100_000),
    "nested-40-deep-extra": edit(put("/result/extra", json.loads("[" * 40 + "]" * 40))),
    # what is not a regular file
    "symlink": not_a_file("symlink"),
    "fifo": not_a_file("fifo"),
    "directory": not_a_file("directory"),
    "missing": lambda folder: folder / "no-such-file.json",
    "character-device": lambda folder: Path("/dev/null"),
    # one bad file among good ones: all or nothing
    "good-then-bad": lambda folder: [_conflicting(folder, "good.json", 1.0), edit(put(f"{LAT}/median", -1.0))(folder)],
    "bad-then-good": lambda folder: [raw(b"{")(folder), _conflicting(folder, "good.json", 1.02)],
    "two-good-one-bad": lambda folder: [_conflicting(folder, "a.json", 1.03), raw(b"NaN")(folder), _conflicting(folder, "b.json", 1.04)],
}  # fmt: skip
assert len(VARIANTS) >= 60


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_hostile_file_is_refused_and_changes_nothing(variant, registry, submissions, tmp_path):
    made = VARIANTS[variant](tmp_path)
    files = made if isinstance(made, list) else [made]
    before = (sqlite_bytes(registry), dump(registry))
    result = ingest(registry, submissions, *files)
    assert result.exit_code == 1, (variant, result.output)
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines, "a refusal names its problems"
    for line in lines:
        match = LINE.match(line)
        assert match, line
        assert match["file"] in {str(f) for f in files}, line
        assert len(line) < 400, line
    assert (sqlite_bytes(registry), dump(registry)) == before


@pytest.mark.parametrize("backend", BACKENDS)
def test_files_at_every_bound_are_accepted_by_both_back_ends(backend, submissions, tmp_path):
    """Longest texts (non-ASCII), most samples and the largest numbers the contract allows store alike."""
    document = genuine(
        device_name="Ω" * 200, driver="д" * 64, python="3" * 64, torch="t" * 64, transformers="x" * 64,
        prunereg="p" * 32, git_revision="g" * 64, threads=4096,
    )  # fmt: skip
    _samples(document, [3_600_000.0] * 500 + [1e-9] * 500)
    latency(document).update(dense_samples=[3_600_000.0] * 1000, dense_median=3_600_000.0)
    document["result"]["environment"]["execution_mode"] = "graph"
    for point in document["result"]["points"]:
        for row in point["latency"]:
            row["execution"] = "graph"
    latency(document, 0, 1).update(execution="eager", fallback="é" * 300)
    with backend_url(backend, tmp_path) as url:
        result = ingest(url, submissions, write(tmp_path, "bounds.json", document))
        assert result.exit_code == 0, result.output
        assert dump(url)["latency_measurements"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_conflicting_measurements_are_kept_whatever_the_order(backend, submissions, tmp_path):
    a = _conflicting(tmp_path, "a.json", 1.0)
    b = _conflicting(tmp_path, "b.json", 1.05)
    stored = []
    for order in ([a, b], [b, a]):
        folder = tmp_path / "-".join(p.stem for p in order)
        folder.mkdir()
        with backend_url(backend, folder) as url:
            for path in order:
                assert ingest(url, submissions, path).exit_code == 0
            assert ingest(url, submissions, a, b).stdout.count("added nothing") == 2  # identical files add nothing
            stored.append(dump(url, content_only=True))
    assert stored[0] == stored[1]
    assert len(stored[0]["runs"]) == 4  # two points, each measured twice: both measurements kept


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_committed_results_ingest_and_the_registry_commands_work(backend, tmp_path):
    files = sorted(p for p in (ROOT / "results").rglob("*--*.json"))
    assert len(files) >= 25
    runner = CliRunner()
    with backend_url(backend, tmp_path) as url:
        result = runner.invoke(
            app, ["ingest", *map(str, files), "--db", url, "--submissions", str(ROOT / "submissions")]
        )
        assert result.exit_code == 0, result.output
        again = runner.invoke(
            app, ["ingest", *map(str, files), "--db", url, "--submissions", str(ROOT / "submissions")]
        )
        assert again.stdout.count("added nothing") == len(files)
        for command in (
            ["leaderboard", "build", "--out", str(tmp_path / "site")],
            ["export", "--format", "json", "--out", str(tmp_path / "export.json")],
            ["export", "--format", "csv"],
            ["frontier", "--phase", "decode", "--batch", "1"],
            ["frontier", "--phase", "prefill", "--batch", "1", "--all"],
        ):
            result = runner.invoke(app, [*command, "--db", url])
            assert result.exit_code == 0, (command, result.output)
        rows = json.loads((tmp_path / "export.json").read_text())["latency"]
        assert rows and all(row["theoretical_speedup"] > 0 for row in rows)
        with create_engine(url).connect() as connection:
            assert connection.execute(text("SELECT count(*) FROM runs")).scalar() > 0


def test_results_of_a_superseded_version_ingest_only_through_its_verbatim_copy(tmp_path, tmp_db):
    """A submission that changed (say, to a faithful selection) keeps its earlier versions' measurements.

    They are accepted only when `superseded/<slug>/<hash12>.json` holds that exact version as a regular file.
    """
    earlier = make_submission(SLUG).model_dump(mode="json", exclude_defaults=True)
    current = json.loads(json.dumps(earlier))
    current["method"]["description"] += " Now with its paper's criterion."
    folder = tmp_path / "submissions"
    versions = folder / "superseded" / SLUG
    versions.mkdir(parents=True)
    write(folder, f"{SLUG}.json", current)
    results = write(tmp_path, "earlier.json", genuine())
    name = f"{make_submission(SLUG).spec_hash()[:12]}.json"

    refused = ingest(tmp_db, folder, results)
    assert refused.exit_code == 1 and "none of its superseded versions" in refused.output, refused.output
    other = json.loads(json.dumps(earlier))
    other["method"]["slug"] = "someone-else"
    write(versions, name, other)  # the right file name, another method's content
    assert ingest(tmp_db, folder, results).exit_code == 1
    (versions / name).unlink()
    (tmp_path / "elsewhere.json").write_text(json.dumps(earlier))
    (versions / name).symlink_to(tmp_path / "elsewhere.json")
    assert ingest(tmp_db, folder, results).exit_code == 1
    (versions / name).unlink()

    write(versions, name, earlier)
    accepted = ingest(tmp_db, folder, results)
    assert accepted.exit_code == 0, accepted.output


def test_every_shipped_superseded_version_is_valid_named_by_its_hash_and_filed_under_its_slug():
    from prunereg.spec.validate import validate_file

    for path in (ROOT / "submissions" / "superseded").glob("*/*.json"):
        submission, problems = validate_file(path)
        assert submission is not None, problems
        assert path.parent.name == submission.method.slug and path.stem == submission.spec_hash()[:12], path
        current, _ = validate_file(ROOT / "submissions" / f"{submission.method.slug}.json")
        assert current is not None and current.spec_hash() != submission.spec_hash(), path


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_checkpoint_point_carries_the_record_of_the_folder_it_declares(backend, tmp_path):
    """The sha256 of a submitted checkpoint's weights reach the registry; a record that is missing or names another
    folder or base is refused, and the registry stays as it was."""
    slug = "checkpoint-test"
    declared = {"path": "checkpoints/drop-25", "base": "prunereg-mini", "sparsity": 0.25}
    sub = make_submission(
        slug, adapter="checkpoint", family="static_depth", points={"drop-25": declared},
        effects=default_effects("layer_drop"), claims=[],
    )  # fmt: skip
    folder = tmp_path / "submissions"
    folder.mkdir()
    write(folder, f"{slug}.json", sub.model_dump(mode="json", exclude_defaults=True))

    def document(record: dict[str, Any] | None) -> Document:
        made = genuine(sub=sub)
        put("/result/points/0/checkpoint", record)(made)
        return made

    with backend_url(backend, tmp_path) as url:
        accepted = ingest(url, folder, write(tmp_path, "genuine.json", document(CHECKPOINT)))
        assert accepted.exit_code == 0, accepted.output
        with create_engine(url).connect() as connection:
            stored = connection.execute(text("SELECT checkpoint FROM runs")).scalars().all()
        assert [json.loads(s) if isinstance(s, str) else s for s in stored] == [CHECKPOINT]
        before = dump(url)
        for name, record, message in [
            ("missing", None, "is missing: the point loads checkpoint checkpoints/drop-25 (base prunereg-mini)"),
            ("other-folder", {**CHECKPOINT, "path": "checkpoints/drop-50"}, "names checkpoints/drop-50"),
            ("other-base", {**CHECKPOINT, "base": "llama-3.1-8b"}, "names checkpoints/drop-25 (base llama-3.1-8b)"),
        ]:
            refused = ingest(url, folder, write(tmp_path, f"{name}.json", document(record)))
            assert refused.exit_code == 1, (name, refused.output)
            assert f": /result/points/0/checkpoint: {message}" in refused.stderr, refused.stderr
            assert dump(url) == before
