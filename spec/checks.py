"""Semantic checks: what the JSON Schema cannot say. One small named check per concern.

Each check takes a loaded Submission and yields Problems (a JSON pointer into the submission
and a message). `CHECKS` is the list `prunereg validate` runs, in order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import NamedTuple

from .adapters import adapters
from .catalog import EMBEDDED_MODEL, ModelArchitecture, models
from .submission import ParamRef, Reported, Submission
from .taxonomy import ADDED_GEMMS, FAMILY_EFFECTS, FAMILY_LABELS, Dimension, Family, Granularity


class Problem(NamedTuple):
    pointer: str
    message: str


Check = Callable[[Submission], Iterator[Problem]]


def unique_operating_points(sub: Submission) -> Iterator[Problem]:
    seen: set[str] = set()
    for i, point in enumerate(sub.adapter.operating_points):
        if point.name in seen:
            yield Problem(f"/adapter/operating_points/{i}/name", f"operating point '{point.name}' is defined twice")
        seen.add(point.name)


def operating_points_within_adapter_limit(sub: Submission) -> Iterator[Problem]:
    """The table bounds how many points an adapter takes (the dense baseline has exactly one)."""
    limit = adapters()[sub.adapter.name].max_operating_points
    if len(sub.adapter.operating_points) > limit:
        yield Problem(
            "/adapter/operating_points", f"adapter '{sub.adapter.name}' takes at most {limit} operating point(s)"
        )


def adapter_fits_family(sub: Submission) -> Iterator[Problem]:
    allowed = adapters()[sub.adapter.name].families
    if sub.family not in allowed:
        names = ", ".join(f.value for f in sorted(allowed, key=lambda f: f.value))
        yield Problem("/adapter/name", f"adapter '{sub.adapter.name}' realizes family {names}, not {sub.family.value}")


def effects_fit_family(sub: Submission) -> Iterator[Problem]:
    allowed = FAMILY_EFFECTS[sub.family]
    if sub.family is not Family.dense and not sub.effects:
        yield Problem("/effects", f"family {sub.family.value} must declare at least one GEMM effect")
    for i, e in enumerate(sub.effects):
        if (e.dimension, e.mode, e.granularity) not in allowed:
            yield Problem(
                f"/effects/{i}",
                f"{e.mode.value} {e.dimension.value} at granularity '{e.granularity.value}' "
                f"is not an effect of family {sub.family.value} ({FAMILY_LABELS[sub.family]})",
            )


def unique_effects(sub: Submission) -> Iterator[Problem]:
    seen: set[tuple[str, str]] = set()
    for i, e in enumerate(sub.effects):
        key = (e.gemm.value, e.dimension.value)
        if key in seen:
            yield Problem(f"/effects/{i}", f"{e.gemm.value} dimension {e.dimension.value} is declared twice")
        seen.add(key)


def added_gemms_are_sized_by_hidden(sub: Submission) -> Iterator[Problem]:
    """A GEMM the dense model lacks (taxonomy.ADDED_GEMMS) is declared through its hidden K and N, and only so."""
    for i, e in enumerate(sub.effects):
        if e.gemm in ADDED_GEMMS and (e.granularity is not Granularity.hidden or e.dimension is Dimension.M):
            yield Problem(
                f"/effects/{i}",
                f"{e.gemm.value} is a GEMM the dense model does not run: declare its K and N at granularity 'hidden'",
            )


def effects_fit_adapter(sub: Submission) -> Iterator[Problem]:
    """An effect's granularity is a unit the named adapter removes (AdapterParams.granularities)."""
    params_model = type(sub.adapter.operating_points[0].params)
    allowed = params_model.granularities
    if allowed is None:
        return
    for i, e in enumerate(sub.effects):
        if e.granularity not in allowed:
            units = ", ".join(f"'{g.value}'" for g in sorted(allowed, key=lambda g: g.value)) or "none"
            why = (
                ": it removes whole KV groups with their query heads, never single query heads"
                if e.granularity is Granularity.head
                else ""
            )
            yield Problem(
                f"/effects/{i}/granularity",
                f"adapter '{sub.adapter.name}' removes {units}, not '{e.granularity.value}'{why}",
            )


NUMERIC = (float, int, float | None, int | None)


def effect_parameters_exist(sub: Submission) -> Iterator[Problem]:
    params_model = type(sub.adapter.operating_points[0].params)
    numeric = {n for n, f in params_model.model_fields.items() if f.annotation in NUMERIC}
    for i, e in enumerate(sub.effects):
        if isinstance(e.fraction, ParamRef) and e.fraction.param not in numeric:
            known = ", ".join(sorted(numeric)) or "none"
            yield Problem(
                f"/effects/{i}/fraction/param",
                f"'{e.fraction.param}' is not a numeric parameter of adapter '{sub.adapter.name}' (known: {known})",
            )


def claims_name_operating_points(sub: Submission) -> Iterator[Problem]:
    names = {p.name for p in sub.adapter.operating_points}
    for i, claim in enumerate(sub.quality_claims):
        if claim.operating_point not in names:
            yield Problem(f"/quality_claims/{i}/operating_point", f"no operating point named '{claim.operating_point}'")


PERPLEXITY_TASKS = frozenset({"wikitext2", "c4", "ptb", "pg19"})
AVERAGE_TASK = "zero-shot-average"
METRIC_DIRECTIONS = {"perplexity": False, "acc": True, "acc_norm": True, "mean_accuracy": True, "exact_match": True}
"""Metrics whose direction is known: a claim that says otherwise has swapped its direction."""


def claims_are_comparable(sub: Submission) -> Iterator[Problem]:
    """What two claims need so that they are compared only with their like (issue: the same task, model, protocol)."""
    catalog = models()
    for i, claim in enumerate(sub.quality_claims):
        where = f"/quality_claims/{i}"
        if isinstance(claim.provenance, Reported) and claim.base_model not in catalog:
            yield Problem(f"{where}/base_model", f"'{claim.base_model}' is not a catalog model (prunereg list models)")
        direction = METRIC_DIRECTIONS.get(claim.metric)
        if direction is not None and direction != claim.higher_is_better:
            yield Problem(
                f"{where}/higher_is_better",
                f"metric '{claim.metric}' is {'higher' if direction else 'lower'} is better",
            )
        if claim.task in PERPLEXITY_TASKS and claim.eval_length is None:
            yield Problem(f"{where}/eval_length", f"perplexity on {claim.task} needs its evaluation length in tokens")
        averaged = len(claim.tasks_averaged)
        if (claim.task == AVERAGE_TASK) != (averaged > 0):
            yield Problem(
                f"{where}/tasks_averaged", f"tasks_averaged lists the tasks of task '{AVERAGE_TASK}', and only those"
            )
        elif averaged == 1 or averaged != len(set(claim.tasks_averaged)):
            yield Problem(f"{where}/tasks_averaged", "an average names two or more distinct tasks")


def target_models(sub: Submission) -> list[ModelArchitecture]:
    """The embedded model (every submission runs on it) and the catalog models its claims name."""
    catalog = models()
    names = [EMBEDDED_MODEL] + [c.base_model for c in sub.quality_claims if c.base_model in catalog]
    return [catalog[n] for n in dict.fromkeys(names)]


def operating_points_fit_models(sub: Submission) -> Iterator[Problem]:
    """Each point's own fit check (its parameter model's `misfit`): a `per_model` entry on the catalog model it
    names, and only there; `params` on every target model no entry names."""
    catalog = models()
    for i, point in enumerate(sub.adapter.operating_points):
        where = f"/adapter/operating_points/{i}"
        for name, params in (point.per_model or {}).items():
            if name not in catalog:
                yield Problem(f"{where}/per_model/{name}", f"'{name}' is not a catalog model (prunereg list models)")
                continue
            problem = params.misfit(catalog[name])
            if problem:
                yield Problem(f"{where}/per_model/{name}", f"on {name}: {problem}")
        for arch in target_models(sub):
            if arch.name not in (point.per_model or {}):
                problem = point.params.misfit(arch)
                if problem:
                    yield Problem(f"{where}/params", f"on {arch.name}: {problem}")


CHECKS: list[Check] = [
    unique_operating_points,
    operating_points_within_adapter_limit,
    adapter_fits_family,
    effects_fit_family,
    unique_effects,
    added_gemms_are_sized_by_hidden,
    effects_fit_adapter,
    effect_parameters_exist,
    claims_name_operating_points,
    claims_are_comparable,
    operating_points_fit_models,
]
