"""Static NK, cross-layer (SliceGPT): remove a share of the residual hidden dimension everywhere.

The same hidden directions go from the embedding (columns), every RMSNorm, the K of q/k/v/gate/up,
the N of o/down and the K of lm_head; tied embeddings stay tied, and the config says the new
hidden size (with head_dim explicit, as heads keep their size).

Selection 'slicegpt' is SliceGPT's (Ashkboos et al. 2024, arXiv 2401.15024, sections 3.2-3.4).
RMSNorm commutes with an orthogonal Q once its weight is folded into the Linears that read the
normalized stream (computational invariance), so the residual stream can be expressed in any
orthonormal basis without changing the model. SliceGPT goes block by block through the calibration
tokens, on the already-sliced earlier blocks (its `rotate_and_slice_sequential`): the stream entering
a block is rotated into the eigenvectors of Σ x xᵀ of that input (sorted by eigenvalue) and the
trailing directions are deleted. The basis changes at every attention and MLP block, so each residual
connection multiplies by Q_inᵀ·Q_out, sliced to kept x kept: the `attn_shortcut` and `mlp_shortcut`
Linears of every layer, GEMMs a dense model does not run (declared as `shortcut_rotation`). The
embedding is written in the first basis and the lm_head reads the last, so tied embeddings are untied,
as SliceGPT does.

Selection 'pca' is the cheaper variant: one Q for the whole residual stream, the PCA of the inputs of
every attention block, every MLP block and the final norm, pooled. With one Q no shortcut is needed,
so the shapes, and the latency, are those of plain slicing, and a tied lm_head stays tied: the final
norm then keeps the diagonal of Qᵀ·diag(g)·Q, exact when g is uniform.

In both, the sliced RMSNorm divides by the root mean square over the kept directions; a weight of
sqrt(hidden / kept) restores SliceGPT's normalization by the original width (its eps is scaled by
kept/hidden, negligible).

'magnitude' (the L2 norm of each embedding column) and 'seeded' are baselines that slice channels
without rotating: the RMSNorm statistics change and more signal is lost.
"""

from __future__ import annotations

import torch
from torch import nn

from prunereg.spec.parameters import HiddenSliceParams

from .base import Adapter, check_calibration, run_hooked
from .layerwise import layer_inputs
from .width import slice_linear


def kept_channels(embedding: torch.Tensor, params: HiddenSliceParams) -> torch.Tensor:
    """Indices (ascending) of the hidden channels kept by a baseline selection."""
    count = params.kept(embedding.shape[1])
    if params.selection == "seeded":
        order = torch.randperm(embedding.shape[1], generator=torch.Generator().manual_seed(params.seed))
    else:
        order = torch.argsort(embedding.detach().float().norm(dim=0).cpu(), descending=True, stable=True)
    return order[:count].sort().values.to(embedding.device)


def slice_norm(norm: nn.Module, channels: torch.Tensor) -> None:
    weight = norm.get_parameter("weight")
    norm.weight = nn.Parameter(weight.detach()[channels].clone(), requires_grad=weight.requires_grad)


@torch.inference_mode()
def residual_covariance(model, calibration: torch.Tensor, batch_size: int = 8) -> torch.Tensor:
    """Σ x xᵀ (float64, on the CPU) of the residual stream entering every attention block, every MLP block
    and the final norm, over all calibration tokens: the pooled inputs SliceGPT's PCA is taken of."""
    hidden = model.config.hidden_size
    device = next(model.parameters()).device
    total = torch.zeros(hidden, hidden, dtype=torch.float64, device=device)

    def accumulate(module, args, kwargs):
        x = (args[0] if args else kwargs["hidden_states"]).reshape(-1, hidden).double()
        total.add_(x.T @ x)

    norms = [n for layer in model.model.layers for n in (layer.input_layernorm, layer.post_attention_layernorm)]
    handles = [n.register_forward_pre_hook(accumulate, with_kwargs=True) for n in (*norms, model.model.norm)]
    run_hooked(model, calibration, handles, batch_size)
    return total.cpu()


def principal_directions(covariance: torch.Tensor) -> torch.Tensor:
    """Q [hidden, hidden], orthogonal: the eigenvectors of `covariance` by decreasing eigenvalue, each signed
    so that its largest-magnitude entry is positive (eigh's sign is arbitrary)."""
    values, vectors = torch.linalg.eigh(covariance.double())
    vectors = vectors[:, torch.argsort(values, descending=True, stable=True)]
    peaks = vectors.abs().argmax(dim=0)
    signs = torch.sign(vectors[peaks, torch.arange(vectors.shape[1], device=vectors.device)])
    return vectors * torch.where(signs == 0, 1.0, signs)


def _linear(weight: torch.Tensor, bias: torch.Tensor | None, like: nn.Linear) -> nn.Linear:
    """A Linear holding float64 `weight`/`bias`, in the device and dtype of `like`."""
    dtype, device = like.weight.dtype, like.weight.device
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=device, dtype=dtype)
    with torch.no_grad():
        linear.weight.copy_(weight)
        if bias is not None:
            linear.bias.copy_(bias)
    return linear


def _reads(linear: nn.Linear, scale: torch.Tensor, basis: torch.Tensor) -> nn.Linear:
    """The Linear that reads the rotated, sliced stream: W·diag(g)·Q_k (the norm weight g folded in)."""
    weight = linear.weight.detach().double() * scale.to(linear.weight.device)
    bias = None if linear.bias is None else linear.bias.detach()
    return _linear(weight @ basis.to(weight.device), bias, linear)


def _writes(linear: nn.Linear, basis: torch.Tensor) -> nn.Linear:
    """The Linear that writes the rotated, sliced stream: Q_kᵀ·W, and its bias b·Q_k."""
    basis = basis.to(linear.weight.device)
    weight = basis.T @ linear.weight.detach().double()
    bias = None if linear.bias is None else linear.bias.detach().double() @ basis
    return _linear(weight, bias, linear)


def _set_norm(norm: nn.Module, weight: torch.Tensor) -> None:
    old = norm.get_parameter("weight")
    norm.weight = nn.Parameter(weight.to(old.device, old.dtype), requires_grad=old.requires_grad)


def _fold_reads(norm: nn.Module, parent: nn.Module, names, basis: torch.Tensor, unit: torch.Tensor) -> None:
    """The norm's weight folded into the Linears that read it, which now read the stream in `basis`."""
    scale = norm.get_parameter("weight").detach().double()
    for name in names:
        setattr(parent, name, _reads(getattr(parent, name), scale, basis))
    _set_norm(norm, unit)


def rotate_and_slice(model, basis: torch.Tensor) -> None:
    """Express the residual stream in the orthonormal columns of `basis` [hidden, kept] (SliceGPT)."""
    inner = model.model
    hidden, kept = basis.shape
    tied = model.lm_head.weight is inner.embed_tokens.weight
    unit = torch.full((kept,), (hidden / kept) ** 0.5, dtype=torch.float64)
    embed = inner.embed_tokens
    rotated = embed.weight.detach().double() @ basis.to(embed.weight.device)
    embed.weight = nn.Parameter(rotated.to(embed.weight.dtype), requires_grad=embed.weight.requires_grad)
    embed.embedding_dim = kept
    for layer in inner.layers:
        attn, mlp = layer.self_attn, layer.mlp
        _fold_reads(layer.input_layernorm, attn, ("q_proj", "k_proj", "v_proj"), basis, unit)
        _fold_reads(layer.post_attention_layernorm, mlp, ("gate_proj", "up_proj"), basis, unit)
        attn.o_proj = _writes(attn.o_proj, basis)
        mlp.down_proj = _writes(mlp.down_proj, basis)
        for module in (layer, mlp):
            if hasattr(module, "hidden_size"):
                module.hidden_size = kept
    final = inner.norm.weight.detach().double().cpu()
    if tied:
        _set_norm(inner.norm, unit * ((basis * final[:, None]) * basis).sum(dim=0))
        model.lm_head.weight = embed.weight
        model.lm_head.in_features = kept
    else:
        model.lm_head = _reads(model.lm_head, final, basis)
        _set_norm(inner.norm, unit)


def shortcut_forward(self, hidden_states: torch.Tensor, **kwargs) -> torch.Tensor:
    """A pre-norm decoder layer whose residual connections multiply by the shortcut rotations."""
    attended = self.self_attn(hidden_states=self.input_layernorm(hidden_states), **kwargs)[0]
    hidden_states = self.attn_shortcut(hidden_states) + attended
    return self.mlp_shortcut(hidden_states) + self.mlp(self.post_attention_layernorm(hidden_states))


_SHORTCUT_CLASSES: dict[type, type] = {}


def with_shortcuts(layer: nn.Module, kept: int) -> None:
    """Turn a transformers decoder layer into one with kept x kept shortcut Linears (identity until set)."""
    cls = type(layer)
    if cls not in _SHORTCUT_CLASSES:
        _SHORTCUT_CLASSES[cls] = type(f"Shortcut{cls.__name__}", (cls,), {"forward": shortcut_forward})
    like = layer.get_submodule("self_attn.o_proj").get_parameter("weight")
    for name in ("attn_shortcut", "mlp_shortcut"):
        shortcut = nn.Linear(kept, kept, bias=False, device=like.device, dtype=like.dtype)
        nn.init.eye_(shortcut.weight)
        setattr(layer, name, shortcut)
    layer.__class__ = _SHORTCUT_CLASSES[cls]


def _covariance(signals: list[torch.Tensor]) -> torch.Tensor:
    """Σ x xᵀ in float64 on the signals' device: the per-block eigendecompositions run there too (two per layer;
    on the CPU they took most of the 500 s SliceGPT's three Llama-2-7B points spent calibrating on an H100)."""
    total = None
    for x in signals:
        x = x.reshape(-1, x.shape[-1]).double()
        total = x.T @ x if total is None else total + x.T @ x
    assert total is not None
    return total


def _set_linear(linear: nn.Linear, weight: torch.Tensor) -> None:
    with torch.no_grad():
        linear.weight.copy_(weight)


@torch.no_grad()
def rotate_and_slice_per_block(model, calibration: torch.Tensor, kept: int) -> None:
    """SliceGPT's sequential rotate-and-slice: a basis per block input, shortcut rotations between them."""
    inner = model.model
    hidden = model.config.hidden_size
    head = model.lm_head.weight.detach().clone()  # the lm_head reads the last basis: untied from the embedding
    inputs, arguments = layer_inputs(model, calibration)
    basis = principal_directions(_covariance(inputs))[:, :kept]
    unit = torch.full((kept,), (hidden / kept) ** 0.5, dtype=torch.float64)
    embed = inner.embed_tokens
    rotated = embed.weight.detach().double() @ basis.to(embed.weight.device)
    embed.weight = nn.Parameter(rotated.to(embed.weight.dtype), requires_grad=embed.weight.requires_grad)
    embed.embedding_dim = kept
    streams = [x.double() @ basis.to(x.device) for x in inputs]
    for index, layer in enumerate(inner.layers):
        attn, mlp = layer.self_attn, layer.mlp
        with_shortcuts(layer, kept)
        dtype = attn.o_proj.weight.dtype
        _fold_reads(layer.input_layernorm, attn, ("q_proj", "k_proj", "v_proj"), basis, unit)
        # the input to the MLP block in the dense basis: the rotated-back residual plus the attention output
        middle = [
            x @ basis.T.to(x.device)
            + attn(hidden_states=layer.input_layernorm(x.to(dtype)), **kwargs[index])[0].double()
            for x, kwargs in zip(streams, arguments)
        ]
        after = principal_directions(_covariance(middle))[:, :kept]
        _set_linear(layer.attn_shortcut, (basis.T @ after).T)
        attn.o_proj = _writes(attn.o_proj, after)
        basis, streams = after, [x @ after.to(x.device) for x in middle]
        _fold_reads(layer.post_attention_layernorm, mlp, ("gate_proj", "up_proj"), basis, unit)
        outputs = [
            x @ basis.T.to(x.device) + mlp(layer.post_attention_layernorm(x.to(dtype))).double() for x in streams
        ]
        after = principal_directions(_covariance(outputs))[:, :kept]
        _set_linear(layer.mlp_shortcut, (basis.T @ after).T)
        mlp.down_proj = _writes(mlp.down_proj, after)
        basis, streams = after, [x @ after.to(x.device) for x in outputs]
        for module in (layer, mlp):
            if hasattr(module, "hidden_size"):
                module.hidden_size = kept
    final = inner.norm.weight.detach().double()
    plain = nn.Linear(hidden, head.shape[0], bias=False, device=head.device, dtype=head.dtype)
    _set_linear(plain, head)
    model.lm_head = _reads(plain, final, basis)
    _set_norm(inner.norm, unit)
    model.config.tie_word_embeddings = False


class HiddenSlice(Adapter[HiddenSliceParams]):
    name = "hidden_slice"

    def refusal(self, model) -> str | None:
        if hasattr(model.model.layers[0], "attn_shortcut"):
            return (
                "SliceGPT's shortcut rotations on the residual connections are GEMMs no transformers config "
                "describes (selection 'pca' rotates once and saves as a plain checkpoint)"
            )
        return None

    def apply(self, model, params: HiddenSliceParams, calibration=None):
        check_calibration(params, calibration)
        config = model.config
        kept = params.kept(config.hidden_size)
        if params.selection == "slicegpt":
            assert calibration is not None
            rotate_and_slice_per_block(model, calibration, kept)
        elif params.selection == "pca":
            assert calibration is not None
            basis = principal_directions(residual_covariance(model, calibration))
            rotate_and_slice(model, basis[:, :kept])
        else:
            slice_channels(model, kept_channels(model.model.embed_tokens.weight, params))
        config.head_dim = model.model.layers[0].self_attn.head_dim
        config.hidden_size = model.model.embed_tokens.embedding_dim
        return model


def slice_channels(model, channels: torch.Tensor) -> None:
    """Keep the listed hidden channels everywhere, without rotating (the baselines)."""
    inner = model.model
    embed = inner.embed_tokens
    tied = model.lm_head.weight is embed.weight
    embed.weight = nn.Parameter(embed.weight.detach()[:, channels].clone(), requires_grad=embed.weight.requires_grad)
    embed.embedding_dim = len(channels)
    for layer in inner.layers:
        attn, mlp = layer.self_attn, layer.mlp
        for parent, names in ((attn, ("q_proj", "k_proj", "v_proj")), (mlp, ("gate_proj", "up_proj"))):
            for name in names:
                setattr(parent, name, slice_linear(getattr(parent, name), cols=channels))
        attn.o_proj = slice_linear(attn.o_proj, rows=channels)
        mlp.down_proj = slice_linear(mlp.down_proj, rows=channels)
        slice_norm(layer.input_layernorm, channels)
        slice_norm(layer.post_attention_layernorm, channels)
        for module in (layer, mlp):
            if hasattr(module, "hidden_size"):
                module.hidden_size = len(channels)
    slice_norm(inner.norm, channels)
    if tied:
        model.lm_head.weight = embed.weight
        model.lm_head.in_features = len(channels)
    else:
        model.lm_head = slice_linear(model.lm_head, cols=channels)


ADAPTER = HiddenSlice()
