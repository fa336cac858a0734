"""Static width pruning (LLM-Pruner, FLAP, Wanda-sp, Minitron width): heads and MLP channels.

Attention heads go in whole grouped-query KV groups: removing KV group g removes its key and
value heads and the query heads that read them, i.e. rows of q/k/v_proj (N) and columns of
o_proj (K). MLP channels are rows of gate/up_proj (N) and columns of down_proj (K). The same
count is kept in every layer, so the pruned model is an ordinary config that transformers loads.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from prunereg.spec.parameters import WidthParams

from .base import Adapter


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
    """Indices (ascending) of the units to keep: largest score, or a seeded random choice."""
    if params.selection == "seeded":
        generator = torch.Generator().manual_seed(params.seed * 1_000_003 + salt)
        order = torch.randperm(scores.numel(), generator=generator)
    else:
        order = torch.argsort(scores.float().cpu(), descending=True, stable=True)
    return order[:count].sort().values.to(scores.device)


def _row_norms(weight: torch.Tensor, groups: int) -> torch.Tensor:
    return weight.detach().float().reshape(groups, -1).pow(2).sum(dim=1)


def prune_attention(
    attn: GroupedQueryAttention, kept_groups: int, num_kv: int, params: WidthParams, layer: int
) -> None:
    head_dim = attn.head_dim
    per_group = attn.num_key_value_groups
    scores = (
        _row_norms(attn.k_proj.weight, num_kv)
        + _row_norms(attn.v_proj.weight, num_kv)
        + _row_norms(attn.q_proj.weight, num_kv)
        + _row_norms(attn.o_proj.weight.T.contiguous(), num_kv)
    )
    groups = _keep(scores, kept_groups, params, salt=2 * layer)
    kv_rows = (groups[:, None] * head_dim + torch.arange(head_dim, device=groups.device)).flatten()
    q_width = per_group * head_dim
    q_rows = (groups[:, None] * q_width + torch.arange(q_width, device=groups.device)).flatten()
    attn.q_proj = slice_linear(attn.q_proj, rows=q_rows)
    attn.k_proj = slice_linear(attn.k_proj, rows=kv_rows)
    attn.v_proj = slice_linear(attn.v_proj, rows=kv_rows)
    attn.o_proj = slice_linear(attn.o_proj, cols=q_rows)


def prune_mlp(mlp: GatedMLP, kept: int, params: WidthParams, layer: int) -> None:
    channels = mlp.gate_proj.out_features
    scores = (
        _row_norms(mlp.gate_proj.weight, channels)
        + _row_norms(mlp.up_proj.weight, channels)
        + _row_norms(mlp.down_proj.weight.T.contiguous(), channels)
    )
    rows = _keep(scores, kept, params, salt=2 * layer + 1)
    mlp.gate_proj = slice_linear(mlp.gate_proj, rows=rows)
    mlp.up_proj = slice_linear(mlp.up_proj, rows=rows)
    mlp.down_proj = slice_linear(mlp.down_proj, cols=rows)


class Width(Adapter[WidthParams]):
    name = "width"

    def apply(self, model, params: WidthParams, calibration=None):
        config = model.config
        num_kv = config.num_key_value_heads
        kept_groups = params.kept_kv_groups(num_kv)
        kept_channels = params.kept_channels(config.intermediate_size)
        head_dim = model.model.layers[0].self_attn.head_dim
        for index, layer in enumerate(model.model.layers):
            if kept_groups < num_kv:
                prune_attention(layer.self_attn, kept_groups, num_kv, params, index)
            if kept_channels < config.intermediate_size:
                prune_mlp(layer.mlp, kept_channels, params, index)
        config.head_dim = head_dim  # no longer hidden_size / heads once heads are gone
        config.num_attention_heads = kept_groups * (config.num_attention_heads // num_kv)
        config.num_key_value_heads = kept_groups
        config.intermediate_size = kept_channels
        return model


ADAPTER = Width()
