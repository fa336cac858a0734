"""Quality tasks as a registry (spec/tasks.py): the named tasks, the papers' perplexity protocol, the shipped
lm-eval cloze over the embedded held-out split, the results fields they record and `prunereg list tasks`."""

from __future__ import annotations

import importlib.util
import json
import math
import socket
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from factories import make_result, make_submission
from sqlalchemy import select
from tiny_models import tiny
from typer.testing import CliRunner

from prunereg.cli import app
from prunereg.evaluate import EvaluationError, evaluate, quality_measures
from prunereg.harness import tasks as harness_tasks
from prunereg.harness.embedded import CALIBRATION_SET, EVAL_SPLIT
from prunereg.harness.models import load_model
from prunereg.harness.tasks import HERE, TaskUnavailable, measure, windowed_perplexity
from prunereg.registry.db import connect
from prunereg.registry.ingest import MEASURED_QUALITY, ingest, measurement_digest
from prunereg.registry.schema import QualityRecord
from prunereg.spec.catalog import EMBEDDED_MODEL, Phase, Scenario, suite_tasks, suites
from prunereg.spec.results import EvaluationResult, QualityResult, SavedEvaluation
from prunereg.spec.submission import spec_hash
from prunereg.spec.tasks import TASK_DATA_ENV, task, tasks

ROOT = Path(__file__).resolve().parents[1]
SCENARIO = Scenario(phase=Phase.prefill, batch_size=1, seq_len=32)


def cloze_builder():
    spec = importlib.util.spec_from_file_location("austen_cloze", ROOT / "tools" / "austen_cloze.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def no_network(monkeypatch):
    """Every socket connection attempted, refused: nothing here may reach the network."""
    attempts: list[tuple] = []

    def refuse(self, *address):
        attempts.append(address)
        raise OSError("the network is off in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    return attempts


@pytest.fixture(scope="module")
def embedded():
    return load_model(EMBEDDED_MODEL, "cpu", torch.float32)


# The registry


def test_the_registry_names_each_task_once_with_its_direction_and_protocol():
    assert list(tasks()) == ["heldout-ppl", "wikitext2-ppl", "c4-ppl", "austen-cloze"]
    held = task("heldout-ppl")
    assert (held.metric, held.higher_is_better, held.kind, held.version) == ("cross_entropy", False, "perplexity", "1")
    for name in ("wikitext2-ppl", "c4-ppl"):
        assert (task(name).metric, task(name).higher_is_better, task(name).kind) == ("perplexity", False, "perplexity")
        assert "non-overlapping windows" in task(name).protocol and task(name).hf_dataset is not None
    cloze = task("austen-cloze")
    assert (cloze.metric, cloze.higher_is_better, cloze.kind, cloze.shots) == ("acc", True, "lm-eval", 0)
    with pytest.raises(ValueError, match="unknown quality task 'mmlu' \\(known: heldout-ppl, wikitext2-ppl"):
        task("mmlu")


def test_every_suite_names_known_tasks_with_the_held_out_figure_first():
    assert suite_tasks("ci") == ("heldout-ppl", "austen-cloze")
    assert suite_tasks(suites()["ci"]) == suite_tasks("ci")
    assert suite_tasks((SCENARIO,)) == ("heldout-ppl",)  # scenarios of no suite: the default
    for name in suites():
        assert suite_tasks(name)[0] == "heldout-ppl" and all(t in tasks() for t in suite_tasks(name))


def test_the_lm_eval_config_is_the_registry_entry_and_ships():
    config = (HERE / "austen_cloze.yaml").read_text()
    cloze = task("austen-cloze")
    assert f"task: {cloze.lm_eval_task}\n" in config
    assert f"metadata:\n  version: {cloze.version}\n" in config
    assert "output_type: multiple_choice" in config and "- metric: acc\n" in config and "- metric: acc_norm\n" in config
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '"prunereg.harness.tasks",' in pyproject
    assert '\n"prunereg.harness.tasks" = ["*.yaml", "*.jsonl"]\n' in pyproject


# The papers' perplexity protocol


def test_windowed_perplexity_is_the_papers_protocol_by_hand():
    torch.manual_seed(0)
    model = tiny("llama")
    seq_len = 16
    ids = torch.randint(0, model.config.vocab_size, (3 * seq_len + 5,))
    by_hand = []
    for w in range(3):  # the 5-token tail is dropped
        window = ids[w * seq_len : (w + 1) * seq_len]
        with torch.no_grad():
            logits = model(input_ids=window[None]).logits[0].double()
        nll = [-torch.log_softmax(logits[t], -1)[window[t + 1]].item() for t in range(seq_len - 1)]
        by_hand.append(sum(nll) / len(nll))
    value, tokens = windowed_perplexity(model, ids, seq_len, batch_size=2)
    assert tokens == 3 * (seq_len - 1)
    assert value == pytest.approx(math.exp(sum(by_hand) / 3), rel=1e-5)
    with pytest.raises(TaskUnavailable, match="fewer than one window of 16"):
        windowed_perplexity(model, ids[:15], seq_len)


def test_a_local_text_file_is_scored_in_windows_of_the_context_length(embedded, tmp_path, monkeypatch, no_network):
    text = EVAL_SPLIT.read_text()[:4_500]
    (tmp_path / "wikitext2-ppl.txt").write_text(text)
    monkeypatch.setenv(TASK_DATA_ENV, str(tmp_path))
    quality = measure(embedded.model, embedded.tokenizer, "wikitext2-ppl")
    ids = torch.tensor(embedded.tokenizer(text)["input_ids"])
    seq_len = embedded.model.config.max_position_embeddings
    windows = ids[: ids.numel() // seq_len * seq_len].view(-1, seq_len)
    with torch.no_grad():
        logits = embedded.model(input_ids=windows).logits[:, :-1]
    assert len(windows) >= 2
    per_window = F.cross_entropy(logits.transpose(1, 2), windows[:, 1:], reduction="none").mean(1)
    assert quality.dense == pytest.approx(math.exp(per_window.mean().item()), rel=1e-5)
    result = quality.of(embedded.model)
    assert (result.task, result.metric, result.task_version, result.harness) == (
        "wikitext2-ppl", "perplexity", "1", "prunereg",
    )  # fmt: skip
    assert result.value == result.dense_value and result.tokens == len(windows) * (seq_len - 1)
    assert no_network == []


def test_the_datasets_cache_is_read_offline_and_joined_as_the_papers_join_it(monkeypatch):
    import datasets  # type: ignore[import-untyped]

    seen = []

    def cached(path, name=None, split=None, data_files=None):
        seen.append((path, name, split, data_files, datasets.config.HF_HUB_OFFLINE))
        return datasets.Dataset.from_list([{"text": f"doc {i}"} for i in range(1200)])

    monkeypatch.setattr(datasets, "load_dataset", cached)
    monkeypatch.delenv(TASK_DATA_ENV, raising=False)
    assert harness_tasks.local_text(task("wikitext2-ppl")) == "\n\n".join(f"doc {i}" for i in range(1200))
    assert harness_tasks.local_text(task("c4-ppl")) == " ".join(f"doc {i}" for i in range(1100))
    assert seen == [
        ("wikitext", "wikitext-2-raw-v1", "test", None, True),
        ("allenai/c4", None, "validation", {"validation": "en/c4-validation.00000-of-00008.json.gz"}, True),
    ]


def test_unavailable_data_is_one_line_and_no_download(embedded, tmp_path, monkeypatch, no_network):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf" / "datasets"))
    monkeypatch.setenv(TASK_DATA_ENV, str(tmp_path))
    with pytest.raises(TaskUnavailable) as err:
        measure(embedded.model, embedded.tokenizer, "c4-ppl")
    (line,) = str(err.value).splitlines()
    assert line.startswith(f"c4-ppl: no local data ({tmp_path / 'c4-ppl.txt'} does not exist")
    assert "prunereg never downloads it" in line
    sub = make_submission("shortgpt-tasks", points={"drop-25": {"sparsity": 0.25}}, claims=[])
    with pytest.raises(EvaluationError, match="^wikitext2-ppl: no local data"):
        evaluate(sub, EMBEDDED_MODEL, "cpu", (SCENARIO,), warmup=0, repeats=3, tasks=("wikitext2-ppl",))
    assert no_network == []


def test_without_lm_eval_an_lm_eval_task_is_one_line(embedded, monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # as on the GPU machine, which has no lm-eval
    with pytest.raises(TaskUnavailable) as err:
        measure(embedded.model, embedded.tokenizer, "austen-cloze")
    assert str(err.value) == (
        "austen-cloze runs through lm-evaluation-harness, which is not installed here (lm_eval): "
        "pip install 'lm-eval[hf]'"
    )


def test_random_weights_measure_no_quality(embedded):
    """Not even a task that could not run here: on random weights no quality task is built at all."""
    random = replace(embedded, weights="random")
    assert quality_measures(random, ("wikitext2-ppl", "austen-cloze")) == []


# The shipped cloze


def test_the_cloze_file_is_rebuilt_byte_for_byte_from_the_held_out_split_only():
    builder = cloze_builder()
    shipped = (HERE / "austen_cloze.jsonl").read_text()
    assert builder.render(builder.build(EVAL_SPLIT.read_text())) == shipped
    docs = [json.loads(line) for line in shipped.splitlines()]
    held_out, train = EVAL_SPLIT.read_text(), CALIBRATION_SET.read_text()
    assert len(docs) == 300 and [d["id"] for d in docs] == list(range(300))
    for doc in docs:
        assert len(set(doc["choices"])) == 4 and 0 <= doc["label"] < 4
        sentence = f"{doc['context']} {doc['choices'][doc['label']]}"
        assert sentence in held_out and sentence not in train
    assert {d["label"] for d in docs} == {0, 1, 2, 3}


# lm-eval on the embedded model, end to end


@pytest.fixture(scope="module")
def evaluated():  # two lm-eval runs (dense, drop-25) and two held-out scores: about a minute on two busy cores
    sub = make_submission("shortgpt-tasks", points={"drop-25": {"sparsity": 0.25}}, claims=[])
    attempts: list[tuple] = []
    original = socket.socket.connect
    socket.socket.connect = lambda self, *address: (attempts.append(address), original(self, *address))[1]
    try:
        result = evaluate(
            sub, EMBEDDED_MODEL, "cpu", (SCENARIO,), warmup=0, repeats=3, tasks=("heldout-ppl", "austen-cloze")
        )
    finally:
        socket.socket.connect = original
    return sub, result, attempts


@pytest.mark.slow
def test_lm_eval_runs_offline_on_the_embedded_model_and_dense_beats_chance(evaluated):
    import lm_eval  # type: ignore[import-untyped]

    _, result, attempts = evaluated
    assert attempts == []
    (point,) = result.points
    held, cloze = point.quality
    assert (held.task, held.task_version, held.harness, held.shots, held.examples) == (
        "heldout-ppl", "1", "prunereg", None, None,
    )  # fmt: skip
    assert held.dense_value == pytest.approx(3.8043, abs=1e-3)  # the card's figure: the protocol is unchanged
    assert (cloze.task, cloze.metric, cloze.higher_is_better, cloze.task_version) == (
        "austen-cloze",
        "acc",
        True,
        "1.0",
    )
    assert (cloze.harness, cloze.harness_version, cloze.shots, cloze.examples) == (
        "lm-eval",
        lm_eval.__version__,
        0,
        300,
    )
    assert 0 <= cloze.value <= 1 and 0 <= cloze.dense_value <= 1
    assert cloze.dense_value > 0.4  # chance is 0.25; 0.40 is six standard deviations of chance over 300 examples


@pytest.mark.slow
def test_the_new_fields_round_trip_through_a_results_file_and_ingestion(evaluated, tmp_path):
    sub, result, _ = evaluated
    saved = SavedEvaluation(submission=sub, result=result)
    assert SavedEvaluation.model_validate_json(saved.model_dump_json()) == saved
    engine = connect(str(tmp_path / "registry.db"))
    ingest(engine, sub, result)
    with engine.connect() as connection:
        rows = connection.execute(
            select(QualityRecord.task, QualityRecord.task_version, QualityRecord.shots, QualityRecord.examples,
                   QualityRecord.harness_name, QualityRecord.harness_version, QualityRecord.value)
            .where(QualityRecord.provenance == "measured").order_by(QualityRecord.id)
        ).all()  # fmt: skip
    held, cloze = result.points[0].quality
    assert [tuple(r) for r in rows] == [
        ("heldout-ppl", "1", None, None, "prunereg", held.harness_version, held.value),
        ("austen-cloze", "1.0", 0, 300, "lm-eval", cloze.harness_version, cloze.value),
    ]
    assert ingest(engine, sub, result).added == {}  # the same file again adds nothing
    engine.dispose()


# Results files written before tasks had versions


def old_digest(run: dict, latency: list[dict], quality: list[dict]) -> str:
    """measurement_digest as revision 0004 computed it, before the quality fields of versioned tasks."""
    from prunereg.registry.ingest import MEASURED_LATENCY, MEASURED_RUN

    blob = {
        "run": {k: run[k] for k in MEASURED_RUN},
        "latency": sorted(({k: r[k] for k in MEASURED_LATENCY} for r in latency), key=lambda r: r["scenario"]),
        "quality": sorted(
            ({k: r[k] for k in MEASURED_QUALITY} for r in quality), key=lambda r: (r["task"], r["metric"])
        ),
    }
    if run.get("calibration") is not None:
        blob["calibration"] = run["calibration"]
    return spec_hash(blob)[:32]


def test_files_without_the_new_fields_keep_their_digest_and_validate():
    from prunereg.registry.ingest import _measured

    committed = [
        SavedEvaluation.model_validate_json(p.read_text()) for p in (ROOT / "results").glob("*/*prunereg-mini*.json")
    ]
    older = [s for s in committed if all(q.task_version is None for p in s.result.points for q in p.quality)]
    assert older and len(older) < len(committed)  # results/h200-faithful/ was written with the new fields
    for saved in older:
        for point in saved.result.points:
            measured = _measured(saved.result, point)
            assert measurement_digest(**measured) == old_digest(**measured)
    sub = make_submission("shortgpt-tasks", claims=[])
    result = make_result(sub)
    document = result.model_dump(mode="json")
    point = document["points"][0]
    assert point["quality"] and all(q["task_version"] is None for q in point["quality"])
    point["quality"][0].update(task_version="2")
    changed = _measured(result, EvaluationResult.model_validate(document).points[0])
    assert measurement_digest(**changed) != measurement_digest(**_measured(result, result.points[0]))


@pytest.mark.parametrize(
    ("field", "value"),
    [("task_version", "one"), ("shots", -1), ("examples", 0), ("harness", "lm\neval"), ("harness_version", "x" * 33)],
)
def test_the_new_fields_are_bounded(field, value):
    figure = {"task": "austen-cloze", "metric": "acc", "value": 0.5, "dense_value": 0.6, "higher_is_better": True}
    QualityResult.model_validate({**figure, "tokens": 0})
    with pytest.raises(ValueError, match=field):
        QualityResult.model_validate({**figure, "tokens": 0, field: value})


# prunereg list tasks


def test_list_tasks_and_its_markdown_table():
    listing = CliRunner().invoke(app, ["list", "tasks"], terminal_width=300)
    assert listing.exit_code == 0, listing.output
    assert all(name in listing.output for name in tasks())
    markdown = CliRunner().invoke(app, ["list", "tasks", "--markdown"])
    lines = markdown.output.splitlines()
    assert lines[0] == "| task | version | metric | better | kind | data | protocol |"
    assert [line.split(" | ")[0] for line in lines[2:]] == [f"| `{name}`" for name in tasks()]
    scenarios = CliRunner().invoke(app, ["list", "scenarios"], terminal_width=300)
    assert "heldout-ppl, austen-cloze" in scenarios.output
