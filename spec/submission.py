"""The submission: a pruning method as data.

These frozen pydantic models are the single source of the JSON Schema in
spec/schema/submission.schema.json (regenerate with `prunereg schema`); every field has a
description that lands in the schema and on the site. Nothing in a submission is ever
imported, executed or fetched: it names a built-in adapter and gives it bounded parameters.
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Generic, Literal, TypeVar, Union

from pydantic import BaseModel, Field, create_model, model_validator
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

from .catalog import Frozen
from .parameters import (
    DenseParams,
    HiddenSliceParams,
    LayerDropParams,
    LowRankParams,
    SemiStructuredParams,
    SparseAttentionParams,
    SublayerDropParams,
    TokenRoutingParams,
    UnstructuredParams,
    WidthParams,
)
from .taxonomy import Dimension, Family, Gemm, Granularity, Mode

SCHEMA_VERSION = 1
SCHEMA_ID = f"urn:prunereg:schema:submission:{SCHEMA_VERSION}"

NO_MARKUP = r"^[^<>]*$"
"""Names, titles and labels hold no angle brackets: a name is not a place for markup."""
Text = Annotated[str, Field(min_length=1, max_length=200, pattern=NO_MARKUP)]
Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,39}$")]
Score = Annotated[float, Field(ge=-1e6, le=1e6)]
P = TypeVar("P", bound=Frozen)


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


class OperatingPoint(Frozen, Generic[P]):
    name: Name = Field(description="unique within the submission, e.g. drop-25")
    description: str = Field("", max_length=300, description="what this point is, e.g. a quarter of the layers")
    params: P = Field(description="the adapter's parameters at this point")


class DenseAdapter(Frozen):
    name: Literal["dense"] = Field(description="the built-in adapter: 'dense' prunes nothing")
    operating_points: list[OperatingPoint[DenseParams]] = Field(
        min_length=1, max_length=1, description="the one unpruned point"
    )


def _adapter(name: str, params: type[Frozen]) -> type[Frozen]:
    """The submission block of one adapter: its name and its operating points' parameter model."""
    return create_model(
        f"{''.join(part.title() for part in name.split('_'))}Adapter",
        __base__=Frozen,
        name=(Literal[name], Field(description="the built-in adapter that applies the method")),
        operating_points=(
            list[OperatingPoint[params]],
            Field(min_length=1, max_length=32, description="the settings at which the method is measured"),
        ),
    )


ADAPTER_PARAMETERS: dict[str, tuple[type[Frozen], frozenset[Family]]] = {
    "layer_drop": (LayerDropParams, frozenset({Family.static_depth})),
    "sublayer_drop": (SublayerDropParams, frozenset({Family.static_depth})),
    "width": (WidthParams, frozenset({Family.static_width})),
    "hidden_slice": (HiddenSliceParams, frozenset({Family.static_cross_layer})),
    "semi_structured_2_4": (SemiStructuredParams, frozenset({Family.static_k_2_4})),
    "low_rank": (LowRankParams, frozenset({Family.static_k_low_rank})),
    "token_routing": (TokenRoutingParams, frozenset({Family.dynamic_depth})),
    "sparse_attention": (SparseAttentionParams, frozenset({Family.dynamic_attention})),
    "unstructured": (UnstructuredParams, frozenset({Family.unstructured})),
}
"""The built-in adapters a submission can name: parameter model and the families each realizes.
Adding an adapter means one entry here (the schema value) and one module in adapters/."""

ADAPTER_FAMILIES: dict[str, frozenset[Family]] = {"dense": frozenset({Family.dense})} | {
    name: families for name, (_, families) in ADAPTER_PARAMETERS.items()
}

Adapter = Annotated[
    Union[(DenseAdapter, *(_adapter(name, params) for name, (params, _) in ADAPTER_PARAMETERS.items()))],
    Field(discriminator="name"),
]


class Reported(Frozen):
    source: Literal["reported"] = Field(description="'reported': the number is taken from a paper")
    arxiv: str = Field(pattern=r"^\d{4}\.\d{4,5}(v\d{1,2})?$", description="arXiv id of the paper that reports it")
    table: str = Field(min_length=1, max_length=60, pattern=NO_MARKUP, description="where in the paper, e.g. 'Table 2'")


class MeasuredElsewhere(Frozen):
    source: Literal["measured"] = Field(description="'measured': someone measured it outside prunereg")
    by: str = Field(min_length=1, max_length=120, pattern=NO_MARKUP, description="who measured it")
    note: str = Field("", max_length=300, description="how and where it was measured")


class Harness(Frozen):
    name: str = Field(min_length=1, max_length=64, pattern=NO_MARKUP, description="e.g. lm-evaluation-harness")
    version: str = Field(min_length=1, max_length=32, pattern=NO_MARKUP, description="the harness's version")


class QualityClaim(Frozen):
    """A quality number and every setting that changes such numbers."""

    base_model: str = Field(
        min_length=1, max_length=100, pattern=NO_MARKUP, description="catalog name or hub id of the dense model"
    )
    base_model_revision: str | None = Field(
        None, max_length=64, pattern=NO_MARKUP, description="hub revision (commit) of the dense model, when pinned"
    )
    operating_point: Name = Field(description="the submission's operating point the number belongs to")
    task: str = Field(min_length=1, max_length=64, pattern=NO_MARKUP, description="e.g. wikitext2, arc_easy")
    metric: str = Field(min_length=1, max_length=64, pattern=NO_MARKUP, description="e.g. perplexity, acc_norm")
    higher_is_better: bool = Field(description="direction of the metric: true for accuracy, false for perplexity")
    value: Score = Field(description="the pruned model's value")
    dense_value: Score = Field(description="the dense model's value in the same setting")
    shots: int | None = Field(None, ge=0, le=100, description="few-shot examples per question, where the task has them")
    harness: Harness | None = Field(None, description="the evaluation harness that computed it, if any")
    finetune_tokens: int = Field(0, ge=0, le=10**13, description="recovery fine-tuning after pruning, in tokens")
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
    adapter: Adapter = Field(description="the built-in adapter that realizes the method, with its operating points")
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


def published(model: type[BaseModel], schema_id: str) -> dict:
    """The JSON Schema (2020-12) of a model as published under spec/schema/."""
    schema = model.model_json_schema(schema_generator=PortableJsonSchema)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": schema_id, **schema}


def json_schema() -> dict:
    return published(Submission, SCHEMA_ID)
