"""The results-file gate: what a saved evaluation must satisfy beyond its pydantic model. One small check per concern.

A saved evaluation comes from a contributor's machine, so nothing in it is taken on trust that
prunereg can recompute: statistics must be those of their samples, resolved effects those of
the declaration, and theoretical times those of the cost model on the catalog model and device
profile (`with_roofline` then stores prunereg's own figures). Each check yields Problems whose
pointer is into the results file.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from pathlib import Path

from pydantic import ValidationError

from .calibration import Calibration
from .catalog import devices, models
from .checks import CHECKS, Problem
from .costmodel import estimate
from .effects import resolve
from .jsonfile import JsonFileError, read_json
from .parameters.base import AdapterParams
from .results import (
    MAX_RESULT_BYTES,
    NO_CONTROL,
    CalibrationRecord,
    CheckpointRecord,
    EvaluationResult,
    LatencyResult,
    SavedEvaluation,
    latency_summary,
)
from .tasks import tasks
from .validate import SUPERSEDED, _one_line, _pointer, _pointer_from_loc, validate_file

REL_TOL = 1e-6
"""Relative tolerance of recomputed figures: JSON keeps floats exactly, so this only absorbs float rounding."""
MAX_PROBLEMS = 100

ResultCheck = Callable[[SavedEvaluation], Iterator[Problem]]


def _differs(stored: float, recomputed: float) -> bool:
    return not math.isclose(stored, recomputed, rel_tol=REL_TOL, abs_tol=0.0)


def _latencies(saved: SavedEvaluation):
    for i, point in enumerate(saved.result.points):
        for j, latency in enumerate(point.latency):
            yield f"/result/points/{i}/latency/{j}", point, latency


def result_is_for_the_submission(saved: SavedEvaluation) -> Iterator[Problem]:
    expected = saved.submission.spec_hash()
    if saved.result.spec_hash != expected:
        yield Problem("/result/spec_hash", f"is not the embedded submission's hash {expected[:12]}")


def points_are_the_submissions(saved: SavedEvaluation) -> Iterator[Problem]:
    names = {p.name for p in saved.submission.adapter.operating_points}
    seen: set[str] = set()
    for i, point in enumerate(saved.result.points):
        if point.operating_point not in names:
            yield Problem(f"/result/points/{i}/operating_point", f"no operating point named '{point.operating_point}'")
        elif point.operating_point in seen:
            yield Problem(f"/result/points/{i}/operating_point", f"'{point.operating_point}' is measured twice")
        seen.add(point.operating_point)


def scenarios_and_tasks_unique(saved: SavedEvaluation) -> Iterator[Problem]:
    for i, point in enumerate(saved.result.points):
        scenarios = [lat.scenario.name for lat in point.latency]
        for j, name in enumerate(scenarios):
            if name in scenarios[:j]:
                yield Problem(f"/result/points/{i}/latency/{j}/scenario", f"scenario {name} is measured twice")
        tasks = [(q.task, q.metric) for q in point.quality]
        for j, task in enumerate(tasks):
            if task in tasks[:j]:
                yield Problem(f"/result/points/{i}/quality/{j}", f"{task[0]} {task[1]} is given twice")


def _params_for(saved: SavedEvaluation) -> dict[str, AdapterParams]:
    """Each operating point's parameters on the result's model (OperatingPoint.params_for)."""
    return {p.name: p.params_for(saved.result.model) for p in saved.submission.adapter.operating_points}


def effects_are_the_declaration(saved: SavedEvaluation) -> Iterator[Problem]:
    """Resolved effects equal the point's declaration resolved on the model (spec/effects.py): the cost model prices
    these. A model outside the catalog cannot be resolved (catalog_model_and_device says so)."""
    params = _params_for(saved)
    arch = models().get(saved.result.model)
    for i, point in enumerate(saved.result.points):
        if point.operating_point in params and arch is not None:
            problem = params[point.operating_point].misfit(arch)
            if problem:
                yield Problem(f"/result/points/{i}/operating_point", f"does not fit {arch.name}: {problem}")
                continue
            declared = resolve(saved.submission.effects, params[point.operating_point], arch)
            if [e.model_dump() for e in point.effects] != [e.model_dump() for e in declared]:
                yield Problem(f"/result/points/{i}/effects", "are not the submission's effects resolved at this point")


def calibration_mismatch(
    declared: Calibration | None, record: CalibrationRecord | None, context: int | None
) -> str | None:
    """Why a point's calibration record is not its declared calibration as run on a model of `context` positions.

    The record names the declared set, sequences and seed, the declared length capped at the context (at
    most the declared length where the context is unknown: a local checkpoint), and tokens = sequences ×
    length. A record for a selection that needs none, or none for one that needs one, is refused too.
    """
    if declared is None:
        return None if record is None else "is given, but the point's selection needs no calibration"
    expected = f"{declared.sequences} × {declared.length} tokens of {declared.dataset} (seed {declared.seed})"
    if record is None:
        return f"is missing: the point's selection calibrates on {expected}"
    length = declared.length_on(context if context is not None else record.length)
    used = (record.dataset, record.sequences, record.length, record.seed)
    if used != (declared.dataset, declared.sequences, length, declared.seed):
        got = f"{record.sequences} × {record.length} tokens of {record.dataset} (seed {record.seed})"
        return f"says {got}, the point declares {expected}" + (f" capped at {context} positions" if context else "")
    tokens = record.sequences * record.length
    if record.tokens != tokens:
        return f"says {record.tokens} tokens, but {record.sequences} × {record.length} is {tokens}"
    return None


def stand_in_mismatch(weights: str, params: AdapterParams, stand_in: str | None) -> str | None:
    """Why a point's stand-in selection is not one prunereg would have used: only on random weights, and only
    the point's own shape stand-in (AdapterParams.shape_stand_in)."""
    if stand_in is None:
        return None
    if weights != "random":
        return f"'{stand_in}' stood in on {weights} weights, where the point's own selection must run"
    expected = params.shape_stand_in()
    if expected is None or getattr(expected, "selection", None) != stand_in:
        allowed = "none" if expected is None else repr(getattr(expected, "selection", None))
        return f"'{stand_in}' is not this point's shape stand-in ({allowed})"
    return None


def stand_in_is_the_points(saved: SavedEvaluation) -> Iterator[Problem]:
    """A stand-in selection is the point's own shape stand-in, and only on random weights."""
    params = _params_for(saved)
    for i, point in enumerate(saved.result.points):
        if point.operating_point in params:
            problem = stand_in_mismatch(saved.result.weights, params[point.operating_point], point.stand_in)
            if problem:
                yield Problem(f"/result/points/{i}/stand_in", problem)


def ran_params(params: AdapterParams, stand_in: str | None) -> AdapterParams:
    """The parameters a point ran with: its own, or its shape stand-in where the result names one."""
    stand_in_params = params.shape_stand_in() if stand_in is not None else None
    return stand_in_params if stand_in_params is not None else params


def calibration_is_the_declaration(saved: SavedEvaluation) -> Iterator[Problem]:
    """Each point's calibration record is the one its params (or its stand-in's) declare, capped at the catalog
    model's context."""
    params = _params_for(saved)
    arch = models().get(saved.result.model)
    for i, point in enumerate(saved.result.points):
        if point.operating_point in params:
            declared = ran_params(params[point.operating_point], point.stand_in).calibration_needed()
            problem = calibration_mismatch(declared, point.calibration, arch.max_position_embeddings if arch else None)
            if problem:
                yield Problem(f"/result/points/{i}/calibration", problem)


def checkpoint_mismatch(adapter: str, params: AdapterParams, record: CheckpointRecord | None) -> str | None:
    """Why a point's checkpoint record is not the checkpoint its params name: a point of the `checkpoint` adapter
    records the folder and base it declares (and the weights' sha256, which only the loading machine can know);
    a point of any other adapter loads no checkpoint, so records none."""
    if adapter != "checkpoint":
        return None if record is None else f"is given, but adapter '{adapter}' loads no checkpoint"
    declared = (getattr(params, "path", None), getattr(params, "base", None))
    if record is None:
        return f"is missing: the point loads checkpoint {declared[0]} (base {declared[1]}) and records its weights"
    if (record.path, record.base) != declared:
        return f"names {record.path} (base {record.base}), the point declares {declared[0]} (base {declared[1]})"
    return None


def checkpoint_is_the_declaration(saved: SavedEvaluation) -> Iterator[Problem]:
    """Each point of the `checkpoint` adapter records the folder and base its params name; no other point records one."""
    adapter = saved.submission.adapter
    params = _params_for(saved)
    for i, point in enumerate(saved.result.points):
        if point.operating_point in params:
            problem = checkpoint_mismatch(adapter.name, params[point.operating_point], point.checkpoint)
            if problem:
                yield Problem(f"/result/points/{i}/checkpoint", problem)


def statistics_are_the_samples(saved: SavedEvaluation) -> Iterator[Problem]:
    """median, p20 and p80 are the samples' median and inclusive 20th/80th percentiles."""
    for pointer, _, latency in _latencies(saved):
        for name, value in latency_summary(latency.samples).items():
            if _differs(getattr(latency, name), value):
                yield Problem(f"{pointer}/{name}", f"is {getattr(latency, name):g}, the samples give {value:g}")


def dense_median_is_the_dense_samples(saved: SavedEvaluation) -> Iterator[Problem]:
    """Where the dense samples are given, the dense median (and so the speedup) is theirs, repeat for repeat."""
    for pointer, _, latency in _latencies(saved):
        if latency.dense_samples is None:
            continue
        if len(latency.dense_samples) != len(latency.samples):
            yield Problem(f"{pointer}/dense_samples", "dense and pruned repeats are interleaved, so they are as many")
        dense = latency_summary(latency.dense_samples)["median"]
        if _differs(latency.dense_median, dense):
            yield Problem(f"{pointer}/dense_median", f"is {latency.dense_median:g}, the dense samples give {dense:g}")


def timing_is_the_samples(saved: SavedEvaluation) -> Iterator[Problem]:
    """Where the timing record is given, the samples are the repeats it says were asked for and added."""
    for pointer, _, latency in _latencies(saved):
        problem = timing_mismatch(latency)
        if problem:
            yield Problem(f"{pointer}/timing", problem)


def timing_mismatch(latency: LatencyResult) -> str | None:
    """Why a latency's timing record contradicts its samples; None when it does not (or there is none)."""
    timing = latency.timing
    if timing is None:
        return None
    if timing.repeats + timing.added_repeats != len(latency.samples):
        return (
            f"says {timing.repeats} repeats and {timing.added_repeats} added, but there are {len(latency.samples)} "
            "samples"
        )
    if len(latency.samples) > timing.max_repeats:
        return f"holds {len(latency.samples)} repeats, more than its max_repeats {timing.max_repeats}"
    return None


def samples_mismatch(latency: LatencyResult) -> str | None:
    """Why a latency's speedup is not that of its samples, in one line; None when it is.

    Ingestion asks this of every latency, wherever it comes from: the speedup it stores is
    dense_median / median and the interval it computes comes from the samples, so both medians must
    be those of the samples (a results file passes the fuller `statistics_are_the_samples`,
    `dense_median_is_the_dense_samples` and `timing_is_the_samples` first).
    """
    median = latency_summary(latency.samples)["median"]
    if _differs(latency.median, median):
        return f"median is {latency.median:g}, the samples give {median:g}"
    if latency.dense_samples is not None:
        if len(latency.dense_samples) != len(latency.samples):
            return "dense and pruned repeats are interleaved, so they are as many"
        dense = latency_summary(latency.dense_samples)["median"]
        if _differs(latency.dense_median, dense):
            return f"dense_median is {latency.dense_median:g}, the dense samples give {dense:g}"
    return timing_mismatch(latency)


def fallback_mismatch(mode: str, latency: LatencyResult) -> str | None:
    """Why a scenario's execution contradicts its environment's `mode`: it leaves that mode exactly when it
    falls back, with the reason. None when it does not."""
    if (latency.execution != mode) == (latency.fallback is not None):
        return None
    return (
        f"ran {latency.execution} in a {mode} environment with fallback {latency.fallback!r}; "
        "a scenario leaves its environment's mode exactly when it falls back, with the reason"
    )


def fallback_explained(saved: SavedEvaluation) -> Iterator[Problem]:
    mode = saved.result.environment.execution_mode
    for pointer, _, latency in _latencies(saved):
        problem = fallback_mismatch(mode, latency)
        if problem:
            yield Problem(f"{pointer}/execution", problem)


def catalog_model_and_device(saved: SavedEvaluation) -> Iterator[Problem]:
    """Theoretical times can only be recomputed on a catalog model and a catalog device profile."""
    result = saved.result
    if result.model not in models():
        yield Problem("/result/model", f"is not a catalog model ({', '.join(models())}): its roofline is unknown")
    profile = result.environment.device_profile
    if profile not in devices():
        yield Problem("/result/environment/device_profile", f"is not a catalog device ({', '.join(devices())})")
    elif result.environment.tensor_parallel and devices()[profile].interconnect_bandwidth is None:
        yield Problem("/result/environment/tensor_parallel", f"device '{profile}' has no interconnect bandwidth")
    for i, point in enumerate(result.points):
        ranks = point.sharding.tensor_parallel if point.sharding else None
        if ranks != result.environment.tensor_parallel:
            yield Problem(f"/result/points/{i}/sharding", f"is for {ranks or 'no'} ranks, the environment's "
                          f"tensor_parallel is {result.environment.tensor_parallel}")  # fmt: skip


def theoretical_is_the_roofline(saved: SavedEvaluation) -> Iterator[Problem]:
    """theoretical and theoretical_dense are spec/costmodel.py's times for the declaration."""
    roofline = _roofline(saved.result)
    if roofline is None:
        return
    params, arch = _params_for(saved), models()[saved.result.model]
    for pointer, point, latency in _latencies(saved):
        if point.operating_point not in params or params[point.operating_point].misfit(arch):
            continue
        effects = resolve(saved.submission.effects, params[point.operating_point], arch)
        for name, value in (
            ("theoretical", roofline(latency.scenario, effects)),
            ("theoretical_dense", roofline(latency.scenario, ())),
        ):
            if _differs(getattr(latency, name), value):
                yield Problem(
                    f"{pointer}/{name}", f"is {getattr(latency, name):g} ms, the cost model gives {value:g} ms"
                )


def sizes_consistent(saved: SavedEvaluation) -> Iterator[Problem]:
    stats = [("/result/dense_stats", saved.result.dense_stats)]
    stats += [(f"/result/points/{i}/stats", p.stats) for i, p in enumerate(saved.result.points)]
    for pointer, s in stats:
        if s.nonzero_parameters > s.parameters:
            yield Problem(f"{pointer}/nonzero_parameters", "exceeds the parameters stored")


def quality_needs_trained_weights(saved: SavedEvaluation) -> Iterator[Problem]:
    if saved.result.weights == "random":
        for i, point in enumerate(saved.result.points):
            if point.quality:
                yield Problem(f"/result/points/{i}/quality", "random weights have no quality to measure")


def quality_is_a_registered_task(saved: SavedEvaluation) -> Iterator[Problem]:
    """A figure names a task of spec/tasks.py and carries its metric, direction, version and shots: a file
    cannot invent a task, or turn a loss into a gain by flipping the direction."""
    known = tasks()
    for i, point in enumerate(saved.result.points):
        for j, quality in enumerate(point.quality):
            pointer = f"/result/points/{i}/quality/{j}"
            entry = known.get(quality.task)
            if entry is None:
                yield Problem(f"{pointer}/task", f"unknown quality task (known: {', '.join(known)})")
                continue
            for field, registered in (
                ("metric", entry.metric),
                ("higher_is_better", entry.higher_is_better),
                ("task_version", entry.version),
                ("shots", entry.shots),
            ):
                given = getattr(quality, field)
                if given != registered and not (given is None and field in ("task_version", "shots")):
                    yield Problem(f"{pointer}/{field}", f"is {given!r} but task '{entry.name}' has {registered!r}")


CONTROL = re.compile(NO_CONTROL.removeprefix("^[^").removesuffix("]*$").join("[]"))


def one_line_text(saved: SavedEvaluation) -> Iterator[Problem]:
    """No stored string holds a control character (NUL included): the embedded submission's free text too."""
    stack: list[tuple[object, list]] = [(saved.model_dump(mode="json"), [])]
    while stack:
        node, path = stack.pop()
        if isinstance(node, dict):
            stack.extend((v, [*path, k]) for k, v in node.items())
        elif isinstance(node, list):
            stack.extend((v, [*path, i]) for i, v in enumerate(node))
        elif isinstance(node, str) and CONTROL.search(node):
            yield Problem(_pointer(path), "holds a control character (U+0000-U+001F, U+007F-U+009F)")


RESULT_CHECKS: list[ResultCheck] = [
    result_is_for_the_submission,
    points_are_the_submissions,
    scenarios_and_tasks_unique,
    effects_are_the_declaration,
    stand_in_is_the_points,
    calibration_is_the_declaration,
    checkpoint_is_the_declaration,
    statistics_are_the_samples,
    dense_median_is_the_dense_samples,
    timing_is_the_samples,
    fallback_explained,
    catalog_model_and_device,
    theoretical_is_the_roofline,
    sizes_consistent,
    quality_needs_trained_weights,
    quality_is_a_registered_task,
    one_line_text,
]
"""What `prunereg ingest` runs on every results file, in order."""


def _roofline(result: EvaluationResult):
    profile = result.environment.device_profile
    if result.model not in models() or profile not in devices():
        return None
    arch, device, dtype_bytes = models()[result.model], devices()[profile], result.environment.dtype_bytes
    ranks = result.environment.tensor_parallel or 1
    if ranks > 1 and device.interconnect_bandwidth is None:
        return None
    return lambda scenario, effects: estimate(arch, device, scenario, effects, dtype_bytes, ranks).time_ms


def with_roofline(saved: SavedEvaluation) -> SavedEvaluation:
    """The evaluation with prunereg's own theoretical times (those a checked file agrees with to REL_TOL)."""
    roofline = _roofline(saved.result)
    assert roofline is not None, "run catalog_model_and_device first"
    arch = models()[saved.result.model]
    document = saved.model_dump(mode="json")
    for point, point_result in zip(document["result"]["points"], saved.result.points):
        declared = saved.submission.point(point_result.operating_point)
        effects = resolve(saved.submission.effects, declared.params_for(arch.name), arch)
        for latency, latency_result in zip(point["latency"], point_result.latency):
            latency["theoretical"] = roofline(latency_result.scenario, effects)
            latency["theoretical_dense"] = roofline(latency_result.scenario, ())
    return SavedEvaluation.model_validate(document)


def registered_submission(saved: SavedEvaluation, submissions: Path) -> Iterator[Problem]:
    """The embedded submission is exactly (same spec hash) the one under `submissions/` with its slug, or one
    of that slug's superseded versions."""
    slug = saved.submission.method.slug
    path = submissions / f"{slug}.json"
    if not path.exists() and not path.is_symlink():
        yield Problem("/submission/method/slug", f"no submission '{slug}' in {submissions}: submit the method first")
        return
    registered, problems = validate_file(path)
    if registered is None:
        reasons = "; ".join(f"{p.pointer or '/'}: {p.message}" for p in problems[:3])
        yield Problem("/submission", _one_line(f"{path} is not a valid submission ({reasons})"))
        return
    wanted = saved.submission.spec_hash()
    if registered.spec_hash() == wanted:
        return
    version = submissions / SUPERSEDED / slug / f"{wanted[:12]}.json"
    if version.is_file() and not version.is_symlink():
        earlier, _ = validate_file(version)
        if earlier is not None and earlier.spec_hash() == wanted:
            return
    yield Problem(
        "/submission",
        f"differs from {path} (spec {registered.spec_hash()[:12]}) and is none of its superseded versions in "
        f"{submissions / SUPERSEDED / slug}: only those are evaluated",
    )


def load_saved(path: Path, submissions: Path) -> tuple[SavedEvaluation | None, list[Problem]]:
    """A checked results file (theoretical times prunereg's own) or None, and every problem found."""
    try:
        document = read_json(path, MAX_RESULT_BYTES)
    except JsonFileError as err:
        return None, [Problem("", str(err))]
    try:
        saved = SavedEvaluation.model_validate(document)
    except ValidationError as err:
        return None, _capped([_validation_problem(document, e) for e in err.errors()])
    problems = [Problem(f"/submission{p.pointer}", p.message) for check in CHECKS for p in check(saved.submission)]
    problems += [p for check in RESULT_CHECKS for p in check(saved)]
    problems += list(registered_submission(saved, submissions))
    return (None, _capped(problems)) if problems else (with_roofline(saved), [])


PYDANTIC_MESSAGES = {"missing": "is required", "extra_forbidden": "unknown field"}


def _validation_problem(document: object, error) -> Problem:
    pointer = _pointer_from_loc(document, error["loc"])
    if error["type"] == "missing":
        pointer = pointer.rstrip("/") + _pointer([error["loc"][-1]])
    if error["type"] == "string_pattern_mismatch" and error.get("ctx", {}).get("pattern") == NO_CONTROL:
        return Problem(pointer, "holds a control character (U+0000-U+001F, U+007F-U+009F)")
    message = PYDANTIC_MESSAGES.get(error["type"]) or error["msg"].removeprefix("Value error, ")
    return Problem(pointer, _one_line(message))


def _capped(problems: list[Problem]) -> list[Problem]:
    if len(problems) <= MAX_PROBLEMS:
        return problems
    return [*problems[:MAX_PROBLEMS], Problem("", f"and {len(problems) - MAX_PROBLEMS} more problems")]
