"""What every parameter model answers, and the parameter counts of a catalog architecture. No torch."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field

from ..calibration import Calibration
from ..catalog import Frozen, ModelArchitecture
from ..taxonomy import Granularity


def linear_shapes(arch: ModelArchitecture) -> dict[str, tuple[int, int]]:
    """(K, N) = (in, out) features of each Linear of a decoder layer, by its transformers attribute name."""
    h, i = arch.hidden_size, arch.intermediate_size
    q, kv = arch.num_attention_heads * arch.head_dim, arch.num_key_value_heads * arch.head_dim
    return {
        "q_proj": (h, q),
        "k_proj": (h, kv),
        "v_proj": (h, kv),
        "o_proj": (q, h),
        "gate_proj": (h, i),
        "up_proj": (h, i),
        "down_proj": (i, h),
    }


def attention_parameters(arch: ModelArchitecture) -> int:
    """Weights and biases of one attention block (Qwen2 biases q/k/v; Llama's attention_bias also o)."""
    shapes = linear_shapes(arch)
    weights = sum(k * n for name, (k, n) in shapes.items() if name in ("q_proj", "k_proj", "v_proj", "o_proj"))
    if not arch.attention_bias:
        return weights
    biased = ("q_proj", "k_proj", "v_proj") if arch.model_type == "qwen2" else ("q_proj", "k_proj", "v_proj", "o_proj")
    return weights + sum(shapes[name][1] for name in biased)


def mlp_parameters(arch: ModelArchitecture) -> int:
    return 3 * arch.hidden_size * arch.intermediate_size


def parameter_count(arch: ModelArchitecture) -> int:
    """Parameters of the model an architecture describes: embeddings, layers with their two norms, final norm."""
    layer = attention_parameters(arch) + mlp_parameters(arch) + 2 * arch.hidden_size
    embeddings = arch.vocab_size * arch.hidden_size * (1 if arch.tie_word_embeddings else 2)
    return embeddings + arch.num_hidden_layers * layer + arch.hidden_size


class AdapterParams(Frozen):
    """What every adapter's parameter model answers about a model architecture, without torch.

    The defaults describe an adapter that changes no shape (masks, routing, sparse attention).
    """

    granularities: ClassVar[frozenset[Granularity] | None] = None
    """The units this adapter removes, which are the only granularities its submission may declare
    (spec/checks.py); None for an adapter that may remove any (a submitted checkpoint, a plugin)."""

    def removed_share(self, param: str, arch: ModelArchitecture) -> float:
        """The share a numeric parameter stands for on `arch`, as the adapter really removes it.

        What an effect's `{"param": ...}` resolves to (spec/effects.py), so the cost model prices what the
        pruned model runs: where the adapter removes whole units (layers, KV groups, channels) this is the
        count it removes over the count there is, not the stated fraction it was rounded from. By default
        the parameter's value.
        """
        value = getattr(self, param)
        if value is None:
            raise ValueError(f"'{param}' is not given, and {type(self).__name__} cannot derive it")
        return float(value)

    def misfit(self, arch: ModelArchitecture) -> str | None:
        """Why this point cannot be applied to `arch`, or None."""
        return None

    def architecture_after(self, arch: ModelArchitecture) -> ModelArchitecture:
        """The architecture the pruned model's config describes."""
        return arch

    def parameters_after(self, arch: ModelArchitecture) -> int:
        """Parameters of the pruned model (zeroed weights still count: they are stored and multiplied)."""
        return parameter_count(self.architecture_after(arch))

    def calibration_needed(self) -> Calibration | None:
        """The calibration data this point's selection scores on; None for a selection that needs none."""
        return None

    def shape_stand_in(self) -> AdapterParams | None:
        """This point with a baseline selection that gives the same GEMM shapes and needs no calibration, or None.

        On random weights a calibrated choice means nothing (its activations are random) and no quality is
        measured, so `prunereg evaluate` prunes with the stand-in and records it: the latency is that of
        the point's shapes, without minutes of calibration on a large model. None where the selection
        changes the shapes (SliceGPT's shortcuts) or runs its own GEMMs (a router, a pattern estimate); a
        stand-in that does not fit the model (`misfit`) is not used.
        """
        return None

    def _with_selection(self, calibrated: tuple[str, ...], baseline: str) -> AdapterParams | None:
        selection = getattr(self, "selection", None)
        return self.model_copy(update={"selection": baseline}) if selection in calibrated else None


def exact_share(param: str, stated: float | None, removed: int, total: int, unit: str) -> float:
    """removed / total, refusing a stated fraction that is not exactly that share (one line naming both)."""
    share = removed / total
    if stated is not None and abs(stated - share) > 1e-12:
        raise ValueError(f"{param} {stated:g} disagrees with the {removed} of {total} {unit} removed ({share:g})")
    return share


def one_of(described: dict[str, str]) -> Callable[[dict[str, Any]], None]:
    """json_schema_extra that states what each value of a Literal field means: its `enum` becomes a oneOf of
    `const`s, each with its description (JSON Schema 2020-12, which strict ajv compiles)."""

    def extra(schema: dict[str, Any]) -> None:
        values = schema.pop("enum", None) or [schema.pop("const")]
        if set(values) != set(described):
            raise ValueError(f"described values {sorted(described)} are not the field's {sorted(values)}")
        schema["oneOf"] = [{"const": v, "description": described[v]} for v in values]

    return extra


def _refusal(check, *args) -> str | None:
    """The message of the ValueError `check(*args)` raises, or None."""
    try:
        check(*args)
    except ValueError as err:
        return str(err)
    return None


class DenseParams(AdapterParams):
    """The unpruned model: the baseline every speedup and quality loss is measured against."""

    granularities = frozenset()


PROJECTION_DESCRIPTIONS = {
    "qkv_proj": "the q, k and v projections (q_proj, k_proj, v_proj) of every layer",
    "o_proj": "the attention output projection (o_proj) of every layer",
    "gate_up_proj": "the MLP gate and up projections (gate_proj, up_proj) of every layer",
    "down_proj": "the MLP down projection (down_proj) of every layer",
}
Projection = Annotated[
    Literal["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
    Field(json_schema_extra=one_of(PROJECTION_DESCRIPTIONS)),
]


ALL_PROJECTIONS: list[Projection] = ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]


PROJECTION_LINEARS: dict[Projection, tuple[str, ...]] = {
    "qkv_proj": ("q_proj", "k_proj", "v_proj"),
    "o_proj": ("o_proj",),
    "gate_up_proj": ("gate_proj", "up_proj"),
    "down_proj": ("down_proj",),
}
"""Each GEMM of the taxonomy as the transformers Linear attributes that compute it."""
