"""Dynamic depth (Mixture-of-Depths, router-tuning, FFN-SkipLLM): per token, the MLP runs or is skipped.

The MLP of every routed layer is wrapped: the tokens routed to it are gathered from the flattened
[batch * seq, hidden] input, the MLP runs on that smaller M, and its output is scattered back;
skipped tokens add nothing, so the residual stream carries them unchanged. A router (`router`,
hidden -> 1 or hidden -> r -> 1) runs on every token, because Mixture-of-Depths pays for it.

Routing rule (policy 'seeded', the paper's simulation mode). With a window of W = 16 positions and
k = (1 - sparsity) * W, token (row b, position p) passes routed MLP number l (0, 1, ... among the
routed layers) iff slot u = (T[p] + b + l) mod W is one of k evenly spread slots, i.e.
floor((u + 1) k / W) - floor(u k / W) = 1. T holds a seeded permutation of 0..W-1 for every aligned
window of positions (periodic after PERIOD windows). Hence, exactly:

- every aligned window of W positions of one sequence sends exactly k tokens through each routed MLP
  (so a prefill of whole windows runs each routed MLP on exactly (1 - sparsity) * batch * seq rows);
- a step holding one position for each of B sequences sends floor(B k / W) or ceil(B k / W) of them
  (exactly B (1 - sparsity) when that is whole, e.g. B = 8 at sparsity 0.5 or 0.875);
- one token passes floor(L k / W) or ceil(L k / W) of the L routed MLPs.

The decision uses only the token's row and position, never later tokens, so decoding token by token
with the KV cache gives the logits of a full forward.
"""

from __future__ import annotations

from itertools import pairwise

import torch
from torch import nn

from prunereg.spec.parameters import TokenRoutingParams

from .base import Adapter

PERIOD = 1024
"""Windows with their own permutation before the table repeats (16k positions at W = 16)."""


def slot_table(params: TokenRoutingParams) -> torch.Tensor:
    """T: one seeded permutation of the W slots per window, concatenated (shared by all layers)."""
    generator = torch.Generator().manual_seed(params.seed)
    return torch.cat([torch.randperm(params.window, generator=generator) for _ in range(PERIOD)]).to(torch.int16)


def routed(
    positions: torch.Tensor, batch: int, rank: int, params: TokenRoutingParams, table: torch.Tensor
) -> torch.Tensor:
    """bool [batch, seq]: which tokens pass routed MLP number `rank` (the rule in the module docstring)."""
    w, k = params.window, params.capacity()
    rows = torch.arange(batch, device=positions.device)[:, None]
    slot = (table[positions.expand(batch, -1) % table.numel()] + rows + rank) % w
    return (slot + 1) * k // w - slot * k // w == 1


def make_router(hidden: int, rank: int, generator: torch.Generator) -> nn.Module:
    dims = [hidden, rank, 1] if rank else [hidden, 1]
    linears = [nn.Linear(a, b, bias=False) for a, b in pairwise(dims)]
    with torch.no_grad():
        for linear in linears:
            linear.weight.copy_(torch.randn(linear.weight.shape, generator=generator) * linear.in_features**-0.5)
    return linears[0] if len(linears) == 1 else nn.Sequential(*linears)


class RoutedMLP(nn.Module):
    """Runs `mlp` (the original module, projections untouched) on the routed tokens only."""

    table: torch.Tensor

    def __init__(self, mlp: nn.Module, router: nn.Module, table: torch.Tensor, rank: int, params: TokenRoutingParams):
        super().__init__()
        self.mlp, self.router, self.rank, self.params = mlp, router, rank, params
        self.register_buffer("table", table, persistent=False)
        self.positions: torch.Tensor | None = None  # set by the decoder layer's pre-hook on every forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.router(x)  # its cost is MoD's; under the seeded policy its (untrained) score decides nothing
        if self.positions is None or self.positions.shape[-1] != x.shape[1]:
            raise RuntimeError("token routing needs the decoder layer's position_ids")
        chosen = routed(self.positions, x.shape[0], self.rank, self.params, self.table).flatten().nonzero().squeeze(1)
        flat = x.reshape(-1, x.shape[-1])
        out = torch.zeros_like(flat)
        if chosen.numel():
            out.index_copy_(0, chosen, self.mlp(flat.index_select(0, chosen)))
        return out.view_as(x)

    def remember_positions(self, layer: nn.Module, args: tuple, kwargs: dict) -> None:
        """Forward pre-hook on the decoder layer, whose position_ids the MLP's own call does not get."""
        self.positions = kwargs.get("position_ids")


class TokenRouting(Adapter[TokenRoutingParams]):
    name = "token_routing"
    checkpoint_refusal = "per-token routing needs prunereg's routed MLP; no transformers config describes it"

    def apply(self, model, params: TokenRoutingParams, calibration=None):
        params.capacity()
        weight = model.model.embed_tokens.weight
        table = slot_table(params).to(weight.device)
        for rank, index in enumerate(params.routed_layers(model.config.num_hidden_layers)):
            layer = model.model.layers[index]
            generator = torch.Generator().manual_seed(params.seed * 1_000_003 + index)
            router = make_router(model.config.hidden_size, params.router_rank, generator).to(
                weight.device, weight.dtype
            )
            layer.mlp = RoutedMLP(layer.mlp, router, table, rank, params)
            layer.register_forward_pre_hook(layer.mlp.remember_positions, with_kwargs=True)
        return model


ADAPTER = TokenRouting()
