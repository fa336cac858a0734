"""Static width pruning (LLM-Pruner, FLAP, Wanda-sp, Minitron width): heads and MLP channels.

Attention heads go in whole grouped-query KV groups: removing KV group g removes its key and
value heads and the query heads that read them, i.e. rows of q/k/v_proj (N) and columns of
o_proj (K). MLP channels are rows of gate/up_proj (N) and columns of down_proj (K). The same
count is kept in every layer, so the pruned model is an ordinary config that transformers loads,
unless the point gives `per_layer` counts (FLAP's adaptive structure, OWL-style allocations): each
layer then keeps its own, the model runs as such, and `prunereg prune` saves it only where every
layer ended up the same width (no transformers config of these models has a per-layer width).

Which groups and channels stay, all scored on the dense model before anything is removed:
- 'magnitude' (baseline): the largest sum of squared weights of the coupled rows and columns;
  'seeded' (baseline): a seeded random choice.
- 'taylor': LLM-Pruner (Ma et al. 2023, arXiv 2305.11627, eq. 4-5 and hf_prune.py with
  `--taylor param_first --grouping_strategy sum`, the setting of its scripts): the element-wise
  first-order importance |W_k ∂L/∂W_k| of every weight, L the LM loss on the calibration ids, summed
  over all weights of the coupled structure. LLM-Pruner leaves its first and last few layers
  unpruned (layers 4-29 of 32 in its scripts); we prune every layer by the same count.
- 'flap': FLAP (An et al. 2023, arXiv 2312.11983, its WIFV metric): for each input channel j of
  o_proj and down_proj, the sample variance of X_j over the calibration tokens times ‖W[:, j]‖²;
  a KV group sums its query heads' channels. FLAP's bias compensation (a bias W[:, removed]·mean(X)
  on o_proj/down_proj) is left out: Llama and Mistral have no such bias and Qwen2 none on o_proj,
  and adding one would make the pruned model a different config. Its adaptive per-layer structure
  (standardised scores ranked across layers) is not computed here: a submission gives the counts it
  found as `per_layer`, and the metric then picks which groups and channels of each layer stay.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Protocol

import torch
import transformers
from torch import nn

from prunereg.spec.parameters import WidthParams

from .base import Adapter, check_calibration, run_hooked

Scores = list[tuple[torch.Tensor, torch.Tensor]]
"""Per decoder layer: (one score per KV group, one score per MLP channel); higher stays."""
BATCH = 8
"""Calibration sequences per forward (and backward)."""


class GroupedQueryAttention(Protocol):
    """The attention module of Llama, Qwen2 and Mistral: projections by name, query heads in KV groups."""

    head_dim: int
    num_key_value_groups: int
    q_proj: nn.Linear
    k_proj: nn.Linear
    v_proj: nn.Linear
    o_proj: nn.Linear


class GatedMLP(Protocol):
    """The MLP of the same models: SiLU(gate) * up, then down."""

    gate_proj: nn.Linear
    up_proj: nn.Linear
    down_proj: nn.Linear


def slice_linear(linear: nn.Linear, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None) -> nn.Linear:
    """A new, smaller Linear with the given output rows and input columns of `linear`."""
    weight = linear.weight.detach()
    if rows is not None:
        weight = weight[rows]
    if cols is not None:
        weight = weight[:, cols]
    bias = linear.bias
    sliced = nn.Linear(
        weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device, dtype=weight.dtype
    )
    with torch.no_grad():
        sliced.weight.copy_(weight)
        if bias is not None:
            sliced.bias.copy_(bias.detach() if rows is None else bias.detach()[rows])
    return sliced


def _keep(scores: torch.Tensor, count: int, params: WidthParams, salt: int) -> torch.Tensor:
    """Indices (ascending) of the units to keep: largest score (ties: lower index), or a seeded random choice."""
    if params.selection == "seeded":
        generator = torch.Generator().manual_seed(params.seed * 1_000_003 + salt)
        order = torch.randperm(scores.numel(), generator=generator)
    else:
        order = torch.argsort(scores.float().cpu(), descending=True, stable=True)
    return order[:count].sort().values.to(scores.device)


def _row_norms(weight: torch.Tensor, groups: int) -> torch.Tensor:
    return weight.detach().float().reshape(groups, -1).pow(2).sum(dim=1)


def magnitude(layer: Any, num_kv: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of squared weights of each KV group's and each channel's rows and columns."""
    attn, mlp = layer.self_attn, layer.mlp
    groups = (
        _row_norms(attn.k_proj.weight, num_kv)
        + _row_norms(attn.v_proj.weight, num_kv)
        + _row_norms(attn.q_proj.weight, num_kv)
        + _row_norms(attn.o_proj.weight.T.contiguous(), num_kv)
    )
    channels = mlp.gate_proj.out_features
    mlp_scores = (
        _row_norms(mlp.gate_proj.weight, channels)
        + _row_norms(mlp.up_proj.weight, channels)
        + _row_norms(mlp.down_proj.weight.T.contiguous(), channels)
    )
    return groups, mlp_scores


def _coupled(rows: dict[str, torch.Tensor], cols: dict[str, torch.Tensor], num_kv: int) -> torch.Tensor:
    """Σ of per-weight scores over each KV group's (or channel's) rows of `rows` and columns of `cols`."""
    parts = [score.sum(dim=1).reshape(num_kv, -1).sum(dim=1) for score in rows.values()]
    parts += [score.sum(dim=0).reshape(num_kv, -1).sum(dim=1) for score in cols.values()]
    return torch.stack(parts).sum(dim=0)


def _projections(layer: Any) -> dict[str, nn.Linear]:
    attn, mlp = layer.self_attn, layer.mlp
    return {name: getattr(attn, name) for name in ("q_proj", "k_proj", "v_proj", "o_proj")} | {
        name: getattr(mlp, name) for name in ("gate_proj", "up_proj", "down_proj")
    }


def _salience(linear: nn.Linear) -> torch.Tensor:
    """|W ⊙ ∂L/∂W| of one Linear, in float64."""
    assert linear.weight.grad is not None
    return (linear.weight * linear.weight.grad).abs().double()


def taylor_importance(model: Any, calibration: torch.Tensor, batch_size: int = BATCH) -> Scores:
    """LLM-Pruner's first-order element-wise importance, Σ |W ⊙ ∂L/∂W| over each coupled group.

    L is the mean next-token cross-entropy over all calibration tokens; the forward and backward run
    in float32 (weights of another dtype are cast for it and cast back, bit for bit) and the weights
    are not updated. KV group g: k/v rows g, the q rows of the query heads that read it, the matching
    o_proj columns; channel c: gate and up row c, down_proj column c.
    """
    layers = list(model.model.layers)
    targets = [_projections(layer) for layer in layers]
    wanted = {id(linear.weight) for projections in targets for linear in projections.values()}
    parameters = list(model.parameters())
    saved = [(p, p.dtype, p.requires_grad) for p in parameters]
    device = parameters[0].device
    predicted = calibration.shape[0] * (calibration.shape[1] - 1)
    try:
        for p in parameters:
            p.data = p.data.float()
            p.requires_grad_(id(p) in wanted)
            p.grad = None
        with torch.enable_grad():
            for batch in calibration.split(batch_size):
                batch = batch.to(device)
                loss = model(input_ids=batch, labels=batch, use_cache=False).loss
                (loss * (batch.shape[0] * (batch.shape[1] - 1) / predicted)).backward()
        scores: Scores = []
        num_kv = model.config.num_key_value_heads
        with torch.no_grad():
            for projections in targets:
                salience = {name: _salience(linear) for name, linear in projections.items()}
                heads = _coupled(
                    {n: salience[n] for n in ("q_proj", "k_proj", "v_proj")}, {"o_proj": salience["o_proj"]}, num_kv
                )
                channels = salience["gate_proj"].shape[0]
                mlp = _coupled(
                    {n: salience[n] for n in ("gate_proj", "up_proj")}, {"down_proj": salience["down_proj"]}, channels
                )
                scores.append((heads, mlp))
    finally:
        for p, dtype, requires_grad in saved:
            p.grad = None
            p.data = p.data.to(dtype)
            p.requires_grad_(requires_grad)
    return scores


@torch.inference_mode()
def fluctuation(model: Any, calibration: torch.Tensor, batch_size: int = BATCH) -> Scores:
    """FLAP's fluctuation metric: per o_proj/down_proj input channel j, Var(X_j) over the calibration
    tokens (sample variance, n - 1) times ‖W[:, j]‖²; a KV group sums its query heads' channels."""
    layers = list(model.model.layers)
    count: dict[nn.Module, int] = defaultdict(int)
    sums: dict[nn.Module, torch.Tensor] = {}
    squares: dict[nn.Module, torch.Tensor] = {}

    def record(module, args):
        x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
        count[module] += x.shape[0]
        sums[module] = sums[module] + x.sum(dim=0) if module in sums else x.sum(dim=0)
        squares[module] = squares[module] + x.square().sum(dim=0) if module in squares else x.square().sum(dim=0)

    outputs = [module for layer in layers for module in (layer.self_attn.o_proj, layer.mlp.down_proj)]
    handles = [module.register_forward_pre_hook(record) for module in outputs]
    run_hooked(model, calibration, handles, batch_size)

    def metric(linear: nn.Linear) -> torch.Tensor:
        n = count[linear]
        variance = ((squares[linear] - sums[linear].square() / n) / max(n - 1, 1)).clamp(min=0)
        return variance * linear.weight.detach().double().square().sum(dim=0)

    num_kv = model.config.num_key_value_heads
    return [
        (metric(layer.self_attn.o_proj).reshape(num_kv, -1).sum(dim=1), metric(layer.mlp.down_proj)) for layer in layers
    ]


CRITERIA = {"taylor": taylor_importance, "flap": fluctuation}


def prune_attention(attn: GroupedQueryAttention, groups: torch.Tensor) -> None:
    """Keep the KV groups `groups` (ascending): their k/v heads, query heads and o_proj columns."""
    head_dim = attn.head_dim
    kv_rows = (groups[:, None] * head_dim + torch.arange(head_dim, device=groups.device)).flatten()
    q_width = attn.num_key_value_groups * head_dim
    q_rows = (groups[:, None] * q_width + torch.arange(q_width, device=groups.device)).flatten()
    attn.q_proj = slice_linear(attn.q_proj, rows=q_rows)
    attn.k_proj = slice_linear(attn.k_proj, rows=kv_rows)
    attn.v_proj = slice_linear(attn.v_proj, rows=kv_rows)
    attn.o_proj = slice_linear(attn.o_proj, cols=q_rows)


def prune_mlp(mlp: GatedMLP, rows: torch.Tensor) -> None:
    """Keep the channels `rows` (ascending): gate/up rows and down_proj columns."""
    mlp.gate_proj = slice_linear(mlp.gate_proj, rows=rows)
    mlp.up_proj = slice_linear(mlp.up_proj, rows=rows)
    mlp.down_proj = slice_linear(mlp.down_proj, cols=rows)


class Width(Adapter[WidthParams]):
    name = "width"

    def apply(self, model, params: WidthParams, calibration=None):
        check_calibration(params, calibration)
        config = model.config
        num_kv, intermediate = config.num_key_value_heads, config.intermediate_size
        layers = list(model.model.layers)
        head_dim = layers[0].self_attn.head_dim
        kept = params.kept_per_layer(len(layers), num_kv, intermediate)
        if any(width.kv_groups < num_kv or width.channels < intermediate for width in kept):
            criterion = CRITERIA.get(params.selection)
            scores = (
                criterion(model, calibration)
                if criterion is not None and calibration is not None
                else [magnitude(layer, num_kv) for layer in layers]
            )
            for index, (layer, width, (group_scores, channel_scores)) in enumerate(zip(layers, kept, scores)):
                if width.kv_groups < num_kv:
                    prune_attention(layer.self_attn, _keep(group_scores, width.kv_groups, params, salt=2 * index))
                if width.channels < intermediate:
                    prune_mlp(layer.mlp, _keep(channel_scores, width.channels, params, salt=2 * index + 1))
        widest = max(width.kv_groups for width in kept)
        config.head_dim = head_dim  # no longer hidden_size / heads once heads are gone
        config.num_attention_heads = widest * (config.num_attention_heads // num_kv)
        config.num_key_value_heads = widest
        config.intermediate_size = max(width.channels for width in kept)
        return model

    def refusal(self, model) -> str | None:
        """Layers of different widths: a Llama, Qwen2 or Mistral config has one num_key_value_heads and one
        intermediate_size for every layer (transformers has no per-layer field for them), so no plain checkpoint
        holds the model. The pruned model itself runs: each layer's Linears carry their own shapes."""
        widths = {layer_width(layer) for layer in model.model.layers}
        if len(widths) == 1:
            return None
        groups, channels = sorted({g for g, _ in widths}), sorted({c for _, c in widths})
        return (
            f"its layers keep different widths ({groups[0]}-{groups[-1]} KV groups, {channels[0]}-{channels[-1]} "
            f"MLP channels), and a {model.config.model_type} config of transformers {transformers.__version__} "
            "holds one num_key_value_heads and one intermediate_size for all layers"
        )


def layer_width(layer: Any) -> tuple[int, int]:
    """(KV groups, MLP channels) of one pruned decoder layer, read off its Linears."""
    return layer.self_attn.k_proj.out_features // layer.self_attn.head_dim, layer.mlp.gate_proj.out_features


ADAPTER = Width()
