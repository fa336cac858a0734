"""Static NK, cross-layer (SliceGPT): remove a share of the residual hidden dimension everywhere.

The same hidden channels go from the embedding (columns), every RMSNorm, the K of q/k/v/gate/up,
the N of o/down and the K of lm_head; tied embeddings stay tied, and the config says the new
hidden size (with head_dim explicit, as heads keep their size). Channels are kept by the L2 norm
of their embedding column, or by a seeded choice. SliceGPT first rotates the residual stream by
PCA so that deleted channels carry little; without that rotation the RMSNorm statistics change
and more signal is lost, so quality here is a lower bound; the shapes, and so the latency, are its.
"""

from __future__ import annotations

import torch
from torch import nn

from prunereg.spec.parameters import HiddenSliceParams

from .base import Adapter
from .width import slice_linear


def kept_channels(embedding: torch.Tensor, params: HiddenSliceParams) -> torch.Tensor:
    """Indices (ascending) of the hidden channels kept."""
    count = params.kept(embedding.shape[1])
    if params.selection == "seeded":
        order = torch.randperm(embedding.shape[1], generator=torch.Generator().manual_seed(params.seed))
    else:
        order = torch.argsort(embedding.detach().float().norm(dim=0).cpu(), descending=True, stable=True)
    return order[:count].sort().values.to(embedding.device)


def slice_norm(norm: nn.Module, channels: torch.Tensor) -> None:
    weight = norm.get_parameter("weight")
    norm.weight = nn.Parameter(weight.detach()[channels].clone(), requires_grad=weight.requires_grad)


class HiddenSlice(Adapter[HiddenSliceParams]):
    name = "hidden_slice"

    def apply(self, model, params: HiddenSliceParams, calibration=None):
        config, inner = model.config, model.model
        embed = inner.embed_tokens
        channels = kept_channels(embed.weight, params)
        tied = model.lm_head.weight is embed.weight
        embed.weight = nn.Parameter(
            embed.weight.detach()[:, channels].clone(), requires_grad=embed.weight.requires_grad
        )
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
        config.head_dim = model.model.layers[0].self_attn.head_dim
        config.hidden_size = len(channels)
        return model


ADAPTER = HiddenSlice()
