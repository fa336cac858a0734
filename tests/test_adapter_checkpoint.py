"""The `checkpoint` adapter: a submitted pruned checkpoint is loaded safely, checked against its base and its
declared effects, and measured like the built-in adapter that would have produced it."""

from __future__ import annotations

import copy
import hashlib
import json
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from backends import counts
from pydantic import ValidationError
from sqlalchemy import create_engine

import prunereg.adapters.checkpoint as module
from prunereg.adapters import get_adapter
from prunereg.adapters.checkpoint import ADAPTER, CheckpointError, checkpoint_folder, weights_record
from prunereg.evaluate import EvaluationError, apply_point, check_base
from prunereg.harness.checkpoint import save_pruned
from prunereg.harness.embedded import EVAL_SPLIT
from prunereg.harness.models import load_model
from prunereg.harness.quality import encode, mean_cross_entropy
from prunereg.spec.catalog import EMBEDDED_MODEL
from prunereg.spec.parameters import CheckpointParams, LayerDropParams
from prunereg.spec.submission import OperatingPoint
from prunereg.spec.validate import validate_file

ROOT = Path(__file__).resolve().parents[1]
IDS = torch.randint(4096, (2, 40), generator=torch.Generator().manual_seed(3))


def shipped(slug: str) -> dict:
    return json.loads((ROOT / "submissions" / f"{slug}.json").read_text())


def checkpoint_submission(folder: Path, like: str, slug: str, path: str, **declared: float) -> Path:
    """A submission in `folder` with `like`'s effects and one checkpoint point at `path` declaring `declared`."""
    document = shipped(like)
    document["method"] |= {"slug": slug, "name": f"{document['method']['name']} checkpoint"}
    params = {"path": path, "base": EMBEDDED_MODEL, **declared}
    document["adapter"] = {"name": "checkpoint", "operating_points": [{"name": "point", "params": params}]}
    document["quality_claims"] = []  # the papers' claims name `like`'s points, which this submission has not
    file = folder / f"{slug}.json"
    file.write_text(json.dumps(document))
    return file


def prunereg(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "prunereg.cli", *args], capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def embedded():
    return load_model(EMBEDDED_MODEL, "cpu", torch.float32)


@pytest.fixture(scope="module")
def drop_25(embedded, tmp_path_factory) -> Path:
    """The submissions folder of a checkpoint of ShortGPT's drop-25, at checkpoints/drop-25 under it."""
    root = tmp_path_factory.mktemp("submissions")
    adapter = get_adapter("layer_drop")
    model = adapter.apply(copy.deepcopy(embedded.model), LayerDropParams(sparsity=0.25))
    save_pruned(adapter, model, embedded.tokenizer, root / "checkpoints" / "drop-25")
    return root


def copied(drop_25: Path, tmp_path: Path) -> Path:
    """A private copy of the drop-25 checkpoint at tmp_path/checkpoints/x, to break."""
    shutil.copytree(drop_25 / "checkpoints" / "drop-25", tmp_path / "checkpoints" / "x")
    return tmp_path / "checkpoints" / "x"


def at(path: str = "checkpoints/x") -> CheckpointParams:
    return CheckpointParams(path=path, base=EMBEDDED_MODEL, sparsity=0.25)


def test_a_loaded_checkpoint_computes_what_the_built_in_adapter_does(embedded, drop_25):
    built_in = get_adapter("layer_drop").apply(copy.deepcopy(embedded.model), LayerDropParams(sparsity=0.25))
    loaded = ADAPTER.apply(embedded.model, at("checkpoints/drop-25"), folder=drop_25)
    with torch.inference_mode():
        torch.testing.assert_close(loaded(IDS).logits, built_in(IDS).logits, rtol=0, atol=0)
    assert loaded.config.num_hidden_layers == 6 and embedded.model.config.num_hidden_layers == 8


def test_the_checkpoint_of_the_dense_model_is_the_unpruned_point(embedded, tmp_path):
    save_pruned(get_adapter("dense"), embedded.model, None, tmp_path / "checkpoints" / "x")
    same = ADAPTER.apply(embedded.model, CheckpointParams(path="checkpoints/x", base=EMBEDDED_MODEL), folder=tmp_path)
    with torch.inference_mode():
        torch.testing.assert_close(same(IDS).logits, embedded.model(IDS).logits, rtol=0, atol=0)


def test_the_record_holds_the_sha256_of_every_weights_file(drop_25):
    record = weights_record(at("checkpoints/drop-25"), drop_25)
    weights = drop_25 / "checkpoints" / "drop-25" / "model.safetensors"
    assert [(f.name, f.size, f.sha256) for f in record.files] == [
        ("model.safetensors", weights.stat().st_size, hashlib.sha256(weights.read_bytes()).hexdigest())
    ]
    assert (record.path, record.base) == ("checkpoints/drop-25", EMBEDDED_MODEL)


def test_transformers_loads_it_without_remote_code_and_from_safetensors_only(embedded, drop_25, monkeypatch):
    seen = []
    real = module.AutoModelForCausalLM.from_pretrained

    def spy(*args, **kwargs):
        seen.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(module.AutoModelForCausalLM, "from_pretrained", spy)
    ADAPTER.apply(embedded.model, at("checkpoints/drop-25"), folder=drop_25)
    assert [(k["trust_remote_code"], k["use_safetensors"], k["local_files_only"]) for k in seen] == [
        (False, True, True)
    ]


def test_a_config_naming_remote_code_is_refused(embedded, drop_25, tmp_path):
    folder = copied(drop_25, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | {"auto_map": {"AutoModelForCausalLM": "evil.Model"}}))
    with pytest.raises(CheckpointError, match=r"config.json: auto_map names remote code"):
        ADAPTER.apply(embedded.model, at(), folder=tmp_path)
    (folder / "config.json").write_text(json.dumps(config | {"model_type": "evil"}))
    with pytest.raises(CheckpointError, match=r"config.json: model_type 'evil' is not one of"):
        ADAPTER.apply(embedded.model, at(), folder=tmp_path)


class Payload:
    """Unpickling this touches a file: what a pickle weights file can do to the machine that loads it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("keep_safetensors", [True, False])
def test_pickle_weights_are_refused_and_never_unpickled(embedded, drop_25, tmp_path, keep_safetensors):
    folder = copied(drop_25, tmp_path)
    marker = tmp_path / "pwned"
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(Payload(marker)))
    if not keep_safetensors:
        (folder / "model.safetensors").unlink()
    for call in (lambda: ADAPTER.apply(embedded.model, at(), folder=tmp_path), lambda: weights_record(at(), tmp_path)):
        with pytest.raises(CheckpointError, match=r"pytorch_model.bin: pickle weights run code when loaded") as err:
            call()
        assert "\n" not in str(err.value)
    assert not marker.exists()


def test_no_weights_or_a_linked_weights_file_is_refused(embedded, drop_25, tmp_path):
    folder = copied(drop_25, tmp_path)
    weights = folder / "model.safetensors"
    outside = tmp_path / "elsewhere.safetensors"
    weights.rename(outside)
    with pytest.raises(CheckpointError, match=r"no model.safetensors"):
        weights_record(at(), tmp_path)
    weights.symlink_to(outside)
    with pytest.raises(CheckpointError, match=r"model.safetensors is a symbolic link"):
        ADAPTER.apply(embedded.model, at(), folder=tmp_path)


def test_a_config_that_does_not_describe_the_weights_is_refused(embedded, drop_25, tmp_path):
    """Eight layers in config.json over six layers of weights would leave two layers randomly initialized."""
    folder = copied(drop_25, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | {"num_hidden_layers": 8}))
    with pytest.raises(CheckpointError, match=r"missing keys between the weights and config.json: model.layers.6"):
        ADAPTER.apply(embedded.model, at(), folder=tmp_path)


@pytest.mark.parametrize(
    "field,value,problem",
    [("vocab_size", 4000, "differs from"), ("hidden_size", 256, "exceeds"), ("num_hidden_layers", 12, "exceeds")],
)
def test_a_checkpoint_not_pruned_from_the_base_is_refused(embedded, drop_25, tmp_path, field, value, problem):
    folder = copied(drop_25, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | {field: value}))
    with pytest.raises(CheckpointError, match=rf"config.json: {field} {value} {problem} the base model's"):
        ADAPTER.apply(embedded.model, at(), folder=tmp_path)


def test_evaluate_runs_a_checkpoint_only_against_the_base_it_names():
    point = OperatingPoint[CheckpointParams](name="p", params=at())
    check_base([point], EMBEDDED_MODEL)
    with pytest.raises(EvaluationError, match="pruned from prunereg-mini: evaluate it with --model prunereg-mini"):
        check_base([point], "llama-3.1-8b")


@pytest.mark.parametrize(
    "path,problem",
    [
        ("../checkpoints/x", "has a '.' or '..' component"),
        ("checkpoints/../../x", "has a '.' or '..' component"),
        ("/tmp/checkpoints/x", "is absolute"),
        ("~/x", "is absolute"),
        ("meta-llama/Llama-3.1-8B@0e9e39f", "is a hub id: prunereg never downloads; run `hf download meta-llama/"),
        ("https://huggingface.co/x/y", "is a URL: prunereg never downloads"),
        (".hidden/x", "not a plain relative folder path"),
    ],
)
def test_a_path_outside_the_submissions_folder_or_a_hub_id_is_refused_when_validated(path, problem):
    with pytest.raises(ValidationError, match=problem):
        CheckpointParams(path=path, base=EMBEDDED_MODEL)


def test_the_base_is_a_catalog_model():
    with pytest.raises(ValidationError, match="'gpt-2' is not a catalog model"):
        CheckpointParams(path="x", base="gpt-2")


def test_a_symbolic_link_out_of_the_submissions_folder_is_refused(drop_25, tmp_path):
    (tmp_path / "submissions" / "checkpoints").mkdir(parents=True)
    (tmp_path / "submissions" / "checkpoints" / "x").symlink_to(drop_25 / "checkpoints" / "drop-25")
    with pytest.raises(CheckpointError, match=r"leads out of the submission's folder .* through a symbolic link"):
        checkpoint_folder(at(), tmp_path / "submissions")
    with pytest.raises(CheckpointError, match=r"no checkpoint folder .*prunereg never downloads"):
        checkpoint_folder(at("checkpoints/missing"), tmp_path / "submissions")


def test_the_shipped_example_validates_without_its_checkpoint():
    submission, problems = validate_file(ROOT / "submissions" / "shortgpt-checkpoint.json")
    assert problems == [] and submission is not None
    assert submission.adapter.name == "checkpoint"


def held_out(model, embedded) -> float:
    loss, _ = mean_cross_entropy(model, encode(embedded.tokenizer, EVAL_SPLIT), embedded.tokenizer.bos_token_id)
    return loss


@pytest.fixture(scope="module")
def pruned_by_cli(tmp_path_factory) -> Path:
    """`prunereg prune`, as a user runs it: ShortGPT drop-25, LLM-Pruner width-50 and the dense model.

    width-50, not width-25: 6 of 8 heads do not divide the hidden size, which transformers >= 5.2x refuses to save.
    """
    root = tmp_path_factory.mktemp("submitted")
    for slug, point in (("shortgpt", "drop-25"), ("llm-pruner", "width-50"), ("dense", "dense")):
        out = root / "checkpoints" / point
        result = prunereg("prune", str(ROOT / "submissions" / f"{slug}.json"), "--point", point, "--out", str(out))
        assert result.returncode == 0, result.stderr
    return root


@pytest.mark.slow
@pytest.mark.parametrize(
    "like,point,declared",
    [
        ("shortgpt", "drop-25", {"sparsity": 0.25}),
        ("llm-pruner", "width-50", {"attention_sparsity": 0.5, "mlp_sparsity": 0.5}),
    ],
)
def test_a_submitted_checkpoint_evaluates_to_the_built_in_adapters_quality(
    pruned_by_cli, embedded, like, point, declared
):
    submission = checkpoint_submission(pruned_by_cli, like, f"{like}-ckpt", f"checkpoints/{point}", **declared)
    db, saved = pruned_by_cli / f"{like}.db", pruned_by_cli / f"saved-{like}"
    result = prunereg(
        "evaluate", str(submission), "--db", str(db), "--repeats", "3", "--warmup", "0", "--save", str(saved)
    )
    assert result.returncode == 0, result.stderr
    (file,) = saved.iterdir()
    (measured,) = json.loads(file.read_text())["result"]["points"]
    weights = pruned_by_cli / "checkpoints" / point / "model.safetensors"
    assert measured["checkpoint"]["files"][0]["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert measured["checkpoint"]["files"][0]["sha256"] in result.stdout
    spec, _ = validate_file(ROOT / "submissions" / f"{like}.json")
    assert spec is not None
    built_in, _ = apply_point(spec, embedded, spec.point(point))  # what `prunereg prune` applied, calibration included
    (quality,) = [q for q in measured["quality"] if q["task"] == "heldout-ppl"]
    assert quality["value"] == pytest.approx(held_out(built_in, embedded), rel=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize(
    "like,point,declared,gemm",
    [
        ("llm-pruner", "width-50", {"attention_sparsity": 0.25, "mlp_sparsity": 0.25}, "qkv_proj"),
        ("shortgpt", "dense", {"sparsity": 0.25}, "qkv_proj"),
    ],
)
def test_a_checkpoint_that_does_not_do_what_its_submission_declares_is_refused(
    pruned_by_cli, like, point, declared, gemm
):
    """Width-50 weights declared as width-25; every layer kept where a quarter is declared removed."""
    submission = checkpoint_submission(pruned_by_cli, like, f"{like}-liar", f"checkpoints/{point}", **declared)
    db = pruned_by_cli / f"liar-{like}.db"
    result = prunereg("evaluate", str(submission), "--db", str(db), "--repeats", "3", "--warmup", "0")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]  # besides progress bars
    assert line.startswith("error: operating point 'point' does not do what the submission declares: ")
    assert f"{gemm}: declared" in line and "observed" in line and line.count("×") >= 4
    assert not any(counts(create_engine(f"sqlite:///{db}")).get(t) for t in ("methods", "runs", "operating_points"))


@pytest.mark.slow
def test_evaluate_saves_each_point_as_it_is_done_so_a_later_failure_keeps_it(drop_25, tmp_path):
    """`--save` rewrites the file after every operating point: a run stopped later (here by a point whose checkpoint
    does not do what it declares; on a GPU by a device call's time limit) leaves the points measured before it."""
    file = checkpoint_submission(drop_25, "shortgpt", "two-points", "checkpoints/drop-25", sparsity=0.25)
    document = json.loads(file.read_text())
    honest = document["adapter"]["operating_points"][0]
    liar = {"name": "liar", "params": {**honest["params"], "sparsity": 0.5}}
    document["adapter"]["operating_points"] = [honest, liar]
    file.write_text(json.dumps(document))
    saved = tmp_path / "saved"
    result = prunereg(
        "evaluate", str(file), "--db", str(tmp_path / "r.db"), "--repeats", "3", "--warmup", "0", "--save", str(saved)
    )
    assert result.returncode == 1 and "error: operating point 'liar' does not do what" in result.stderr
    (kept,) = saved.iterdir()
    assert [p["operating_point"] for p in json.loads(kept.read_text())["result"]["points"]] == ["point"]
