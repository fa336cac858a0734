"""The submission: a pruning method as data.

These frozen pydantic models are the single source of the JSON Schema in
spec/schema/submission.schema.json (regenerate with `prunereg schema`); every field has a
description that lands in the schema and on the site. Nothing in a submission is ever
imported, executed or fetched: it names an adapter of the table in spec/adapters.py and gives
it bounded parameters.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import TYPE_CHECKING, Annotated, Any, Generic, Literal, TypeVar, Union, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

from .adapters import BUILT_IN, AdapterRow, adapters
from .catalog import Frozen
from .parameters import AdapterParams
from .taxonomy import VALUE_DESCRIPTIONS, Dimension, Family, Gemm, Granularity, Mode

SCHEMA_VERSION = 1
SCHEMA_ID = f"urn:prunereg:schema:submission:{SCHEMA_VERSION}"

NO_MARKUP = r"^[^<>]*$"
"""Names, titles and labels hold no angle brackets: a name is not a place for markup."""
Text = Annotated[str, Field(min_length=1, max_length=200, pattern=NO_MARKUP)]
Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,39}$")]
Score = Annotated[float, Field(ge=-1e6, le=1e6)]
P = TypeVar("P", bound=Frozen)
N = TypeVar("N", bound=str)


class Paper(Frozen):
    title: str = Field(min_length=1, max_length=300, pattern=NO_MARKUP, description="the paper's title")
    arxiv: str | None = Field(None, pattern=r"^\d{4}\.\d{4,5}(v\d{1,2})?$", description="arXiv id, e.g. 2403.03853")
    url: str | None = Field(
        None, max_length=300, pattern=r"""^https://[^\s"'<>]+$""", description="https link, shown only, never fetched"
    )
    venue: str | None = Field(None, max_length=100, pattern=NO_MARKUP, description="where it appeared, e.g. ICLR 2025")
    year: int = Field(ge=1990, le=2100, description="year of publication, or of the first preprint")

    @model_validator(mode="after")
    def _findable(self) -> Paper:
        if self.arxiv is None and self.url is None:
            raise ValueError("give the paper's arxiv id or url")
        return self


class Method(Frozen):
    slug: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{1,62}$", description="stable identifier, also the file name")
    name: str = Field(min_length=1, max_length=120, pattern=NO_MARKUP, description="display name, e.g. ShortGPT")
    authors: list[Text] = Field(min_length=1, max_length=100, description="the paper's authors, in its order")
    paper: Paper = Field(description="the paper that introduces the method")
    license: str = Field(
        min_length=1,
        max_length=64,
        pattern=NO_MARKUP,
        description="SPDX id of the method's reference code, or 'unknown'",
    )
    description: str = Field("", max_length=2000, description="what the method removes and how it chooses")


class ParamRef(Frozen):
    param: str = Field(pattern=r"^[a-z_]{1,40}$", description="name of a numeric operating-point parameter")
    scale: float = Field(
        1.0, gt=0.0, le=1.0, description="fraction = scale x parameter, e.g. 0.5 when only every second layer is pruned"
    )


class Effect(Frozen):
    """One GEMM dimension the method removes."""

    gemm: Gemm = Field(description="the matrix product affected")
    dimension: Dimension = Field(description="the dimension removed: M = tokens, N = outputs, K = the reduction")
    mode: Mode = Field(description="static: the same for every input; dynamic: chosen per token or input")
    granularity: Granularity = Field(description="the unit in which the dimension is removed")
    fraction: Annotated[float, Field(ge=0.0, le=1.0)] | ParamRef = Field(
        description="share of the dimension removed: a number in [0, 1], or the operating-point parameter that gives it"
    )


ModelName = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")]


class OperatingPoint(Frozen, Generic[P]):
    """One setting of the method. `params` apply on every model, except a model that `per_model` names."""

    name: Name = Field(description="unique within the submission, e.g. drop-25")
    description: str = Field("", max_length=300, description="what this point is, e.g. a quarter of the layers")
    params: P = Field(description="the adapter's parameters at this point, on every model `per_model` does not name")
    per_model: dict[ModelName, P] | None = Field(
        None,
        max_length=16,
        description=(
            "the whole parameters used instead of `params` on the catalog model named (e.g. the layer indices or "
            "per-layer widths of llama-2-7b), checked only against that model"
        ),
    )

    def params_for(self, model: str) -> P:
        """The parameters this point runs with on `model` (a catalog name)."""
        return (self.per_model or {}).get(model, self.params)


class AdapterSpecOf(Frozen, Generic[N, P]):
    """A submission's adapter block, for the adapter named N with parameter model P (a row of spec/adapters.py)."""

    name: N = Field(description="the adapter that applies the method: a name in `prunereg list adapters`")
    operating_points: list[OperatingPoint[P]] = Field(
        min_length=1, max_length=32, description="the settings at which the method is measured"
    )

    @classmethod
    def model_parametrized_name(cls, params: tuple[Any, ...]) -> str:
        (name,) = get_args(params[0])
        return block_name(name)


def block_name(adapter: str) -> str:
    """The schema name of an adapter's block, e.g. LayerDropAdapter."""
    return "".join(part.title() for part in adapter.split("_")) + "Adapter"


def adapter_spec_union(rows: list[AdapterRow]):
    """The tagged union of the adapter blocks of these rows, told apart by `name`."""
    blocks = tuple(AdapterSpecOf[Literal[row.name], row.params] for row in rows)  # type: ignore[name-defined]
    return Annotated[Union[blocks], Field(discriminator="name")]  # noqa: UP007 (a tuple of members)


if TYPE_CHECKING:
    AdapterSpec = AdapterSpecOf[str, AdapterParams]
    BuiltInAdapterSpec = AdapterSpecOf[str, AdapterParams]
else:
    AdapterSpec = adapter_spec_union(list(adapters().values()))
    """Every adapter installed here: the built-ins and those of plugin packages."""
    BuiltInAdapterSpec = adapter_spec_union(list(BUILT_IN))
    """The built-in adapters only: what the committed JSON Schema documents."""


class Reported(Frozen):
    source: Literal["reported"] = Field(description="'reported': the number is taken from a paper")
    arxiv: str = Field(
        pattern=r"^\d{4}\.\d{4,5}v\d{1,2}$",
        description="arXiv id with the version whose table was read, e.g. 2401.15024v2: tables change between versions",
    )
    table: str = Field(min_length=1, max_length=60, pattern=NO_MARKUP, description="where in the paper, e.g. 'Table 2'")
    row: str = Field(
        min_length=1,
        max_length=400,
        pattern=NO_MARKUP,
        description="the row as printed (its label and the cells read), so a reader can find and check it",
    )


class MeasuredElsewhere(Frozen):
    source: Literal["measured"] = Field(description="'measured': someone measured it outside prunereg")
    by: str = Field(min_length=1, max_length=120, pattern=NO_MARKUP, description="who measured it")
    note: str = Field("", max_length=300, description="how and where it was measured")


class Harness(Frozen):
    name: str = Field(min_length=1, max_length=64, pattern=NO_MARKUP, description="e.g. lm-evaluation-harness")
    version: str = Field(min_length=1, max_length=32, pattern=NO_MARKUP, description="the harness's version")


TaskName = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")]


class Recovery(Frozen):
    """Training after pruning: a different budget from one-shot pruning, so claims that include it are marked."""

    data: str = Field(min_length=1, max_length=120, pattern=NO_MARKUP, description="the training data, e.g. Alpaca")
    tokens: int | None = Field(None, ge=1, le=10**13, description="training tokens, where the paper gives them")
    method: str = Field(
        "",
        max_length=200,
        pattern=NO_MARKUP,
        description="how, e.g. 'LoRA, 2 epochs' or 'distillation from the dense model'",
    )


class CalibrationUsed(Frozen):
    """The calibration set as the paper states it; 'none' for a data-free selection."""

    data: str = Field(min_length=1, max_length=120, pattern=NO_MARKUP, description="e.g. C4, WikiText-2 train, none")
    sequences: int | None = Field(None, ge=1, le=10**7, description="number of calibration sequences")
    length: int | None = Field(None, ge=1, le=10**7, description="tokens per calibration sequence")


class QualityClaim(Frozen):
    """A quality number and every setting that changes such numbers."""

    base_model: str = Field(
        min_length=1, max_length=100, pattern=NO_MARKUP, description="catalog name or hub id of the dense model"
    )
    base_model_revision: str | None = Field(
        None, max_length=64, pattern=NO_MARKUP, description="hub revision (commit) of the dense model, when pinned"
    )
    operating_point: Name = Field(description="the submission's operating point the number belongs to")
    task: TaskName = Field(
        description="wikitext2, c4, ptb, pg19 (perplexity), an lm-eval task name (arc_easy, ...), or 'zero-shot-average'"
    )
    metric: str = Field(min_length=1, max_length=64, pattern=NO_MARKUP, description="e.g. perplexity, acc_norm")
    higher_is_better: bool = Field(description="direction of the metric: true for accuracy, false for perplexity")
    value: Score = Field(description="the pruned model's value")
    dense_value: Score = Field(description="the dense model's value in the same setting")
    shots: int | None = Field(None, ge=0, le=100, description="few-shot examples per question, where the task has them")
    eval_length: int | None = Field(
        None, ge=1, le=10**7, description="tokens per evaluation window, for perplexity (e.g. 2048); None if unstated"
    )
    tasks_averaged: list[TaskName] = Field(
        default_factory=list,
        max_length=30,
        description="for an average over tasks (task 'zero-shot-average'): the tasks it averages, as lm-eval names them",
    )
    harness: Harness | None = Field(None, description="the evaluation harness that computed it, if any")
    recovery: Recovery | None = Field(
        None, description="fine-tuning after pruning that the number includes; None: one-shot, no recovery"
    )
    calibration: CalibrationUsed | None = Field(None, description="the data the method's selection scored on")
    provenance: Annotated[Reported | MeasuredElsewhere, Field(discriminator="source")] = Field(
        description="where the number comes from: a paper, or a measurement outside prunereg"
    )


class Submission(Frozen):
    """A pruning method: identity, declared GEMM effects, adapter with operating points, claims."""

    schema_version: Literal[1] = Field(description="bumped on every breaking change of this schema")
    method: Method = Field(description="what the method is called and where it is published")
    family: Family = Field(
        description="the taxonomy family: which GEMM dimensions it removes, statically or dynamically"
    )
    effects: list[Effect] = Field(max_length=32, description="declared GEMM effects; checked against a trace")
    adapter: AdapterSpec = Field(description="the adapter that realizes the method, with its operating points")
    quality_claims: list[QualityClaim] = Field(
        default_factory=list,
        max_length=200,
        description="quality reported or measured outside prunereg: shown apart, never on the Pareto front",
    )

    def spec_hash(self) -> str:
        """Identity of the submission's content; defaults are left out, so a new optional field keeps old hashes."""
        return spec_hash(self.model_dump(mode="json", exclude_defaults=True))

    def point(self, name: str) -> OperatingPoint:
        for point in self.adapter.operating_points:
            if point.name == name:
                return point
        raise KeyError(name)


def spec_hash(document: dict) -> str:
    """sha256 of the canonical JSON, so formatting changes keep the hash."""
    blob = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    return hashlib.sha256(blob).hexdigest()


class PortableJsonSchema(GenerateJsonSchema):
    """pydantic's generator minus OpenAPI's `discriminator`, which is no JSON Schema keyword: strict validators refuse it.

    A tagged union stays a oneOf whose branches each fix the tag with a `const`.
    """

    def tagged_union_schema(self, schema: core_schema.TaggedUnionSchema) -> JsonSchemaValue:
        generated = super().tagged_union_schema(schema)
        generated.pop("discriminator", None)
        return generated

    def enum_schema(self, schema: core_schema.EnumSchema) -> JsonSchemaValue:
        """A taxonomy enum as a oneOf of `const`s, each with what the value means (taxonomy.VALUE_DESCRIPTIONS)."""
        generated = super().enum_schema(schema)
        described = VALUE_DESCRIPTIONS.get(schema["cls"])
        if described is not None:
            generated["oneOf"] = [{"const": v, "description": described[v]} for v in generated.pop("enum")]
        return generated

    def normalize_name(self, name: str) -> str:
        """`LayerDropAdapter` rather than `AdapterSpecOf_Literal__layer_drop___LayerDropParams_` in `$defs`,
        and `Submission` for `BuiltInSubmission`: the published schemas name the model the file holds."""
        block = re.fullmatch(r"AdapterSpecOf\[Literal\['(\w+)'\],\w+\]", name)
        return block_name(block[1]) if block else super().normalize_name(name.removeprefix("BuiltIn"))


def published(model: type[BaseModel], schema_id: str) -> dict:
    """The JSON Schema (2020-12) of a model as published under spec/schema/."""
    schema = model.model_json_schema(schema_generator=PortableJsonSchema)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": schema_id, **schema}


class BuiltInSubmission(Submission):
    # A submission as the committed schema documents it: with the built-in adapters only. Its
    # docstring and title are Submission's, so the published schema reads the same.
    __doc__ = Submission.__doc__
    model_config = ConfigDict(title="Submission")
    adapter: BuiltInAdapterSpec = Field(description="the adapter that realizes the method, with its operating points")


def json_schema(installed: bool = False) -> dict:
    """The submission schema: for the built-in adapters (the committed file), or for every installed one."""
    return published(Submission if installed else BuiltInSubmission, SCHEMA_ID)
