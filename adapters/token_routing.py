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

Policy 'trained' (Mixture-of-Depths, Raposo et al. 2024, arXiv 2404.02258, sections 3.4-3.5; base
frozen, routers alone trained on calibration text, as router-tuning does). Training, on the point's
calibration ids in a fixed order (STEPS Adam steps of BATCH sequences, float32 copies of the routers,
nothing random drawn: deterministic for the calibration and the seed that starts the routers): in
every aligned window of W positions the k tokens of highest router score r pass (MoD's expert-choice
top-k), the MLP output of a passing token is multiplied by sigmoid(r) so the router is on the
gradient path of the LM loss (the paper multiplies by the router weight itself; its sigmoid keeps a
frozen MLP's output from being amplified or flipped), plus the paper's first sampling method: a
binary cross-entropy with r as the logit and top-k membership as the target. Inference, causal:
a token passes iff r > the layer's threshold, set (layer by layer, upstream thresholds in place) to
the sparsity quantile of the layer's scores on the calibration ids, and its output is scaled by
sigmoid(r) as in training. The decision reads the token's own hidden state only, so cached decoding
gives the logits of a full forward (up to a score that rounds across its threshold).

Why a threshold and not top-k at inference: top-k over a window reads later tokens (not causal), and
top-k for the prefill with a threshold for decoding would make cached decoding differ from a full
forward; an exact causal quota would need per-sequence state across forward calls, which the
harness's repeated decode step and CUDA graphs do not allow. The price: capacity is exact on the
calibration ids only, elsewhere it is what the router does on that text. Measured on prunereg-mini
at sparsity 0.875 (every second MLP): each routed layer passes 0.115 to 0.141 of held-out text
(0.128 on average, declared 0.125), but 0.15 to 0.27 of random token ids. The declaration check
(harness/trace.py) and the latency workloads therefore run a model that has a tokenizer on its
held-out text (harness.latency.scenario_ids), where the declared fraction holds within the check's
usual tolerance; a random-weight catalog model is calibrated, traced and timed on random ids.
"""

from __future__ import annotations

import copy
from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import nn

from prunereg.spec.parameters import TokenRoutingParams

from .base import Adapter, check_calibration

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


STEPS = 100
"""Adam steps of router training, each on the next BATCH calibration sequences (fixed order, cycling)."""
BATCH = 4
LEARNING_RATE = 3e-2
AUX_WEIGHT = 1.0
"""Weight of MoD's top-k membership cross-entropy next to the LM loss."""


class RoutedMLP(nn.Module):
    """Runs `mlp` (the original module, projections untouched) on the routed tokens only."""

    table: torch.Tensor
    threshold: torch.Tensor | None

    def __init__(self, mlp: nn.Module, router: nn.Module, table: torch.Tensor, rank: int, params: TokenRoutingParams):
        super().__init__()
        self.mlp, self.router, self.rank, self.params = mlp, router, rank, params
        self.register_buffer("table", table, persistent=False)
        self.register_buffer("threshold", None, persistent=False)  # policy 'trained', from fit_thresholds
        self.positions: torch.Tensor | None = None  # set by the decoder layer's pre-hook on every forward
        self.trainee: nn.Module | None = None  # float32 copy of the router while train_routers runs
        self.aux: list[torch.Tensor] = []
        self.scores: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.trainee is not None:
            return self.expert_choice(x)
        score = self.router(x).squeeze(-1).float()  # its cost is MoD's; under the seeded policy it decides nothing
        trained = self.params.policy == "trained"
        if trained and self.threshold is None:  # fit_thresholds is collecting this layer's scores
            self.scores.append(score.flatten())
            keep = torch.ones_like(score, dtype=torch.bool)
        elif trained:
            keep = score > self.threshold
        elif self.positions is None or self.positions.shape[-1] != x.shape[1]:
            raise RuntimeError("token routing needs the decoder layer's position_ids")
        else:
            keep = routed(self.positions, x.shape[0], self.rank, self.params, self.table)
        chosen = keep.flatten().nonzero().squeeze(1)
        flat = x.reshape(-1, x.shape[-1])
        out = torch.zeros_like(flat)
        if chosen.numel():
            y = self.mlp(flat.index_select(0, chosen))
            if trained:
                y = y * torch.sigmoid(score.flatten().index_select(0, chosen))[:, None].to(y.dtype)
            out.index_copy_(0, chosen, y)
        return out.view_as(x)

    def expert_choice(self, x: torch.Tensor) -> torch.Tensor:
        """Training: the k top scores of every aligned window of W positions pass, scaled by sigmoid(score)."""
        assert self.trainee is not None
        score = self.trainee(x.float()).squeeze(-1)
        b, s = score.shape
        w, k = self.params.window, self.params.capacity()
        windows = F.pad(score.detach(), (0, -s % w), value=-torch.inf).view(b, -1, w)
        top = torch.zeros_like(windows).scatter_(-1, windows.topk(k, dim=-1).indices, 1.0).view(b, -1)[:, :s]
        self.aux.append(F.binary_cross_entropy_with_logits(score, top))
        chosen = top.flatten().nonzero().squeeze(1)
        flat = x.reshape(-1, x.shape[-1])
        gate = torch.sigmoid(score.flatten().index_select(0, chosen))[:, None]
        y = self.mlp(flat.index_select(0, chosen)) * gate.to(x.dtype)
        return torch.zeros_like(flat).index_add(0, chosen, y).view_as(x)

    def remember_positions(self, layer: nn.Module, args: tuple, kwargs: dict) -> None:
        """Forward pre-hook on the decoder layer, whose position_ids the MLP's own call does not get."""
        self.positions = kwargs.get("position_ids")


def train_routers(model, routed_mlps: list[RoutedMLP], calibration: torch.Tensor) -> None:
    """MoD's expert-choice routers trained on the calibration ids (LM loss + top-k cross-entropy), base frozen."""
    device = next(model.parameters()).device
    frozen = [p for p in model.parameters() if p.requires_grad]
    trainees = [copy.deepcopy(m.router).float() for m in routed_mlps]
    for m, trainee in zip(routed_mlps, trainees, strict=True):
        m.trainee = trainee
    optimizer = torch.optim.Adam([p for trainee in trainees for p in trainee.parameters()], lr=LEARNING_RATE)
    batches = calibration.split(BATCH)
    try:
        for p in frozen:
            p.requires_grad_(False)
        with torch.inference_mode(False), torch.enable_grad():
            for step in range(STEPS):
                ids = batches[step % len(batches)].to(device)
                for m in routed_mlps:
                    m.aux.clear()
                logits = model(input_ids=ids, use_cache=False).logits[:, :-1].float()
                loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
                loss = loss + AUX_WEIGHT * torch.stack([a for m in routed_mlps for a in m.aux]).mean()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        with torch.no_grad():
            for m, trainee in zip(routed_mlps, trainees, strict=True):
                for target, source in zip(m.router.parameters(), trainee.parameters(), strict=True):
                    target.copy_(source)
    finally:
        for p in frozen:
            p.requires_grad_(True)
        for m in routed_mlps:
            m.trainee, m.aux = None, []


@torch.no_grad()
def fit_thresholds(model, routed_mlps: list[RoutedMLP], calibration: torch.Tensor, sparsity: float) -> None:
    """Each layer's threshold: midway between the scores on either side of its sparsity quantile on the
    calibration ids, fitted layer by layer with the thresholds upstream in place (as inference routes)."""
    device = next(model.parameters()).device
    for m in routed_mlps:
        m.threshold = None
    for m in routed_mlps:
        for batch in calibration.split(BATCH * 4):
            model.model(input_ids=batch.to(device), use_cache=False)
        scores = torch.cat(m.scores).sort().values
        for other in routed_mlps:
            other.scores = []
        n = scores.numel()
        passing = round((1 - sparsity) * n)
        if passing == n:
            m.threshold = torch.tensor(-torch.inf, device=device)
        else:
            below = scores[n - passing - 1]
            m.threshold = (below + (scores[n - passing] if passing else below + 1)) / 2


class TokenRouting(Adapter[TokenRoutingParams]):
    name = "token_routing"
    checkpoint_refusal = "per-token routing needs prunereg's routed MLP; no transformers config describes it"

    def apply(self, model, params: TokenRoutingParams, calibration=None):
        check_calibration(params, calibration)
        params.capacity()
        weight = model.model.embed_tokens.weight
        table = slot_table(params).to(weight.device)
        routed_mlps = []
        for rank, index in enumerate(params.routed_layers(model.config.num_hidden_layers)):
            layer = model.model.layers[index]
            generator = torch.Generator().manual_seed(params.seed * 1_000_003 + index)
            router = make_router(model.config.hidden_size, params.router_rank, generator).to(
                weight.device, weight.dtype
            )
            layer.mlp = RoutedMLP(layer.mlp, router, table, rank, params)
            layer.register_forward_pre_hook(layer.mlp.remember_positions, with_kwargs=True)
            routed_mlps.append(layer.mlp)
        if params.policy == "trained" and calibration is not None:
            train_routers(model, routed_mlps, calibration)
            fit_thresholds(model, routed_mlps, calibration, params.sparsity)
        return model


ADAPTER = TokenRouting()
