"""Fused mode: prunereg's own forward of Llama, Mistral and Qwen2 on the pruned model's own weights.

transformers' forward spends a decode step of a small batch launching kernels and running Python
between them; a CUDA Graph removes the launches but keeps its unfused projections and its dynamic
bookkeeping. This forward is what a serving engine runs instead: q/k/v concatenated into one
Linear (weights and biases) and gate/up into another at load, a static KV cache of its own
([batch, kv_heads, max_len, head_dim] per layer, written at the step's position), RMSNorm and
rotary computed as transformers computes them (cos/sin from the model's own rotary embedding,
RMSNorm with the config's rms_norm_eps), attention through torch SDPA (causal in a prefill from
position 0; no mask for one query over the cache it fills, grouped K/V heads read in place, or
flex_attention's or prunereg's own split-KV decoding where DECODE_ATTENTION says so; sliding windows where
transformers applies them).

Every layer is built from what the pruned model holds, so shapes may differ per layer (width,
sublayer drop, layer drop). What fusion does not apply to keeps the adapter's own module and runs
inside this forward: low-rank factors (LowRankLinear) and 2:4 weights on sparse tensor cores stay
separate projections, SliceGPT's shortcut rotations run where `shortcut_forward` runs them, token
routing's RoutedMLP runs as the MLP (told the positions its pre-hook would have read; it cannot be
captured, `capture_refusal`), and the block-sparse attention function that sparse_attention
registers runs in place of SDPA. A model with anything else (another architecture, block-sparse
attention under a sliding window, a length-dependent rotary, a module or hook this forward does not
know) is refused with the reason (`FusedRefusal`), and the harness times it in graph mode instead.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention.flex_attention import flex_attention
from torch.sparse import SparseSemiStructuredTensor
from transformers import PreTrainedModel
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from prunereg.adapters.hidden_slice import shortcut_forward
from prunereg.adapters.sparse_attention import NAME as BLOCK_SPARSE
from prunereg.adapters.sublayer_drop import DroppedAttention, DroppedMLP
from prunereg.adapters.token_routing import RoutedMLP
from prunereg.harness import decode_attention

ARCHITECTURES = ("llama", "mistral", "qwen2")
SDPA_IMPLEMENTATIONS = ("sdpa", "eager", "prunereg_unmasked_sdpa")
"""Attention implementations whose result is SDPA's (eager computes the same softmax(QKᵀ)V unfused)."""
DECODER_LAYERS = ("LlamaDecoderLayer", "MistralDecoderLayer", "Qwen2DecoderLayer")
"""The decoder layers whose forward FusedLayer computes (SliceGPT's shortcut subclasses too, by their forward)."""
LENGTH_DEPENDENT_ROPE = ("dynamic", "longrope")
"""Rotary types whose frequencies change with the sequence length, so one table per cache would not do."""
DECODE_ATTENTION = "sdpa"
"""A one-query step's attention over the cache: "sdpa" (PyTorch picks cuDNN's or flash's kernel), "flex"
(flex_attention, whose compiled CUDA kernel for a few queries can split the keys among thread blocks, as serving
engines do) or "split-kv" (prunereg's own Triton flash-decoding kernel, harness/decode_attention.py; SDPA where
Triton cannot run it). On an H100 with torch 2.11 flex was ten times slower: one call over Llama-3.1-8B's
4097-position cache took 109 µs against SDPA's 10.7 µs, in the layer's graph, without prologue fusion or in a graph
of its own alike, and inductor had chosen its split-KV decoding kernel (82 µs with the main kernel forced;
benchmarks/flex_decoding.py, results/h100-flex/), so the decode step took 11.1 ms against 6.6 ms. split-kv took 9.2 µs
a call against SDPA's 10.5 µs, and its decode step 6.61 ms against 6.62 ms: SDPA stays."""


class FusedRefusal(ValueError):
    """Why fused mode cannot run a model: the harness records it and times the pair in graph mode."""


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' RMSNorm: statistics in float32, the weight applied in the input's dtype."""
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def fusable(module: nn.Module) -> bool:
    """A plain dense Linear, whose weight can join a concatenated one: not low rank, not on sparse tensor cores."""
    return type(module) is nn.Linear and not isinstance(module.weight, SparseSemiStructuredTensor)


def concatenated(linears: list[Any]) -> nn.Linear:
    """One Linear computing the listed ones side by side (their outputs concatenated), biases included."""
    first = linears[0]
    if any(linear.in_features != first.in_features for linear in linears):
        raise FusedRefusal("projections that read one input have different input widths")
    with torch.no_grad():
        weight = torch.cat([linear.weight for linear in linears])
        biases = [linear.bias for linear in linears]
        if any(b is not None for b in biases):
            bias = torch.cat(
                [b if b is not None else weight.new_zeros(lin.out_features) for b, lin in zip(biases, linears)]
            )
        else:
            bias = None
    fused = nn.Linear(first.in_features, weight.shape[0], bias=bias is not None, device="meta", dtype=weight.dtype)
    fused.weight = nn.Parameter(weight, requires_grad=False)  # no initialization and no second copy of a 70B's
    fused.register_parameter("bias", None if bias is None else nn.Parameter(bias, requires_grad=False))
    return fused


class Projections(nn.Module):
    """Linears that read one input: concatenated into one GEMM where all are plain, else run one by one."""

    def __init__(self, linears: list[Any]):
        super().__init__()
        self.sizes = [int(linear.out_features) for linear in linears]
        self.fused = all(fusable(linear) for linear in linears)
        self.parts = nn.ModuleList([concatenated(linears)] if self.fused else linears)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.fused:
            return list(self.parts[0](x).split(self.sizes, dim=-1))
        return [part(x) for part in self.parts]


class FusedLayer(nn.Module):
    """One decoder layer: attention and MLP blocks (either may be gone), shortcuts where SliceGPT added them."""

    input_norm: Any
    post_norm: Any
    qkv: Projections
    gate_up: Projections
    o_proj: Any
    down_proj: Any
    act: Any
    mlp: Any
    attn: Any
    attn_shortcut: Any
    mlp_shortcut: Any
    head_dim: int
    scaling: float
    heads: int
    kv_heads: int
    attention: Callable | None

    def __init__(self, layer: Any, index: int, config, attention: Callable | None, window: int | None = None):
        super().__init__()
        self.index, self.eps, self.window = index, config.rms_norm_eps, window
        attn, mlp = layer.self_attn, layer.mlp
        self.has_attention = not isinstance(attn, DroppedAttention)
        if self.has_attention:
            self.input_norm = layer.input_layernorm
            self.qkv = Projections([attn.q_proj, attn.k_proj, attn.v_proj])
            self.o_proj = attn.o_proj
            self.head_dim, self.scaling = attn.head_dim, attn.scaling
            q, k, v = self.qkv.sizes
            if q % self.head_dim or k % self.head_dim or k != v or (q // self.head_dim) % max(k // self.head_dim, 1):
                raise FusedRefusal(
                    f"layer {index}: q/k/v widths {q}/{k}/{v} are no grouped-query heads of {self.head_dim}"
                )
            self.heads, self.kv_heads = q // self.head_dim, k // self.head_dim
            self.attention = attention
            if attention is not None:
                self.attn = attn  # the adapter's attention function reads its attributes (block_sparse, router)
        self.routed = isinstance(mlp, RoutedMLP)
        self.has_mlp = not isinstance(mlp, DroppedMLP)
        if self.has_mlp:
            self.post_norm = layer.post_attention_layernorm
            if self.routed:
                self.mlp = mlp  # gathers its tokens and runs the original MLP on them
            else:
                self.gate_up = Projections([mlp.gate_proj, mlp.up_proj])
                self.down_proj, self.act = mlp.down_proj, mlp.act_fn
        self.shortcuts = hasattr(layer, "attn_shortcut")
        if self.shortcuts:
            self.attn_shortcut, self.mlp_shortcut = layer.attn_shortcut, layer.mlp_shortcut

    def forward(
        self,
        h: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        position: int,
        cache: tuple[torch.Tensor, torch.Tensor] | None,
        positions: torch.Tensor,
    ) -> torch.Tensor:
        """h [b, s, hidden] at positions position..position+s-1; writes this step's K/V into `cache` if given."""
        if self.has_attention:
            attended = self.attend(rms_norm(h, self.input_norm.weight, self.eps), cos, sin, position, cache)
            h = (self.attn_shortcut(h) if self.shortcuts else h) + attended
        elif self.shortcuts:
            h = self.attn_shortcut(h)
        if self.has_mlp:
            x = rms_norm(h, self.post_norm.weight, self.eps)
            if self.routed:
                self.mlp.positions = positions
                out = self.mlp(x)
            else:
                gate, up = self.gate_up(x)
                out = self.down_proj(self.act(gate) * up)
            return (self.mlp_shortcut(h) if self.shortcuts else h) + out
        return self.mlp_shortcut(h) if self.shortcuts else h

    def attend(self, x, cos, sin, position: int, cache) -> torch.Tensor:
        b, s, _ = x.shape
        q, k, v = (t.view(b, s, -1, self.head_dim).transpose(1, 2) for t in self.qkv(x))
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        if cache is not None:
            keys, values = cache
            keys[:, :, position : position + s] = k
            values[:, :, position : position + s] = v
            k, v = keys[:, :, : position + s], values[:, :, : position + s]  # the whole cache once it is full
        if self.attention is not None:  # the adapter's attention function: [b, s, heads, d]
            # Unmasked, transformers' convention: queries are the last of the keys, or, 1 < s < keys, the first (an
            # empty static cache's prompt); a chunk after earlier tokens says where it stands with a mask.
            mask = causal_after(position, s, q.device) if position > 0 and s > 1 else None
            out = self.attention(self.attn, q, k, v, mask, scaling=self.scaling, dropout=0.0)[0].reshape(b, s, -1)
            return self.o_proj(out)
        gqa, end = self.heads != self.kv_heads, position + s
        start = 0 if self.window is None or s > 1 else max(0, end - self.window)  # one query: its window, sliced
        k, v = k[:, :, start:], v[:, :, start:]
        if self.window is not None and end > self.window and s > 1:  # a prefill longer than the window: banded
            mask = causal_after(position, s, q.device).triu(diagonal=position - self.window + 1)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scaling, enable_gqa=gqa)
        elif position == 0 and s > 1:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scaling, enable_gqa=gqa)
        elif s == 1:  # one query over every key written so far (in its window): nothing to mask
            out = one_query_attention(q, k, v, self.scaling, gqa)
        else:  # a chunk after earlier tokens: causal with the offset
            mask = causal_after(position, s, q.device)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scaling, enable_gqa=gqa)
        return self.o_proj(out.transpose(1, 2).reshape(b, s, -1))


def causal_after(position: int, s: int, device: torch.device) -> torch.Tensor:
    """[s, position + s]: query i, at position + i, sees keys 0 .. position + i."""
    return torch.ones(s, position + s, dtype=torch.bool, device=device).tril(diagonal=position)


def one_query_attention(q, k, v, scale: float, gqa: bool) -> torch.Tensor:
    """softmax(q·kᵀ·scale)·v for one query per sequence, by DECODE_ATTENTION's kernel."""
    if DECODE_ATTENTION == "flex":
        out = flex_attention(q, k, v, scale=scale, enable_gqa=gqa)
        assert isinstance(out, torch.Tensor)  # no log-sum-exp asked for
        return out
    if DECODE_ATTENTION == "split-kv" and decode_attention.runs(q):
        return decode_attention.split_kv_decode(q, k, v, scale)
    return F.scaled_dot_product_attention(q, k, v, scale=scale, enable_gqa=gqa)


def windows(config) -> list[int | None]:
    """Each layer's sliding window as transformers applies it (Mistral: every layer; Qwen2: its sliding layers)."""
    window = getattr(config, "sliding_window", None)
    if config.model_type == "mistral":
        return [window] * config.num_hidden_layers
    types = getattr(config, "layer_types", None) or ["full_attention"] * config.num_hidden_layers
    return [window if kind == "sliding_attention" else None for kind in types[: config.num_hidden_layers]]


def refusal(model: PreTrainedModel, max_len: int) -> str | None:
    """Why fused mode cannot run this model with a cache of max_len positions, or None."""
    config = model.config
    if config.model_type not in ARCHITECTURES:
        return f"fused mode runs {', '.join(ARCHITECTURES)}, not {config.model_type}"
    window = next((w for w in windows(config) if w is not None and w < max_len), None)
    if window is not None and config._attn_implementation == BLOCK_SPARSE:
        return f"block-sparse attention under a sliding window of {window} tokens inside a {max_len}-token cache"
    rope = (getattr(config, "rope_parameters", None) or {}).get("rope_type", "default")
    if rope in LENGTH_DEPENDENT_ROPE:
        return f"rotary type '{rope}' changes with the sequence length"
    implementation = config._attn_implementation
    if implementation not in (*SDPA_IMPLEMENTATIONS, BLOCK_SPARSE):
        return f"attention implementation '{implementation}' is not SDPA or prunereg's block-sparse function"
    for index, layer in enumerate(model.model.layers[: config.num_hidden_layers]):
        if inspect.unwrap(type(layer).forward) is not shortcut_forward and type(layer).__name__ not in DECODER_LAYERS:
            return f"layer {index} is a {type(layer).__name__}, whose forward fused mode does not know"
        for path, module in layer.named_modules():
            hooks = [*module._forward_pre_hooks.values(), *module._forward_hooks.values()]
            if any(getattr(hook, "__name__", "") != "remember_positions" for hook in hooks):
                return f"layer {index}{'.' + path if path else ''} has a forward hook fused mode would not run"
        attn, mlp = layer.self_attn, layer.mlp
        if not isinstance(attn, DroppedAttention) and not all(
            hasattr(attn, p) for p in ("q_proj", "k_proj", "v_proj", "o_proj")
        ):
            return f"layer {index}'s attention is a {type(attn).__name__}, without q/k/v/o projections"
        inner = mlp.mlp if isinstance(mlp, RoutedMLP) else mlp
        if not isinstance(mlp, DroppedMLP) and not all(
            hasattr(inner, p) for p in ("gate_proj", "up_proj", "down_proj")
        ):
            return f"layer {index}'s MLP is a {type(mlp).__name__}, without gate/up/down projections"
        for block, norm in ((attn, layer.input_layernorm), (mlp, layer.post_attention_layernorm)):
            if not isinstance(block, DroppedAttention | DroppedMLP) and not type(norm).__name__.endswith("RMSNorm"):
                return f"layer {index} has a {type(norm).__name__} where an RMSNorm was"
    return None


CAPTURE_REFUSAL = "token routing's routed MLP picks its tokens with nonzero(), a host sync no CUDA Graph can capture"


def capture_refusal(model: nn.Module) -> str | None:
    """Why no CUDA Graph can capture a step of `model`, in fused mode as in graph mode, or None."""
    return CAPTURE_REFUSAL if any(isinstance(module, RoutedMLP) for module in model.modules()) else None


class FusedModel(nn.Module):
    """The fused forward of one model and its static KV cache, for batches of `batch` up to `max_len` positions.

    The fused Linears are copies (the model itself stays as transformers runs it, for the other
    modes and the dense baseline it is shared with); everything else is the model's own module.
    """

    embed: Any
    norm: Any
    lm_head: Any
    layer_class: type[FusedLayer] = FusedLayer
    """What each decoder layer becomes (harness/tensor_parallel.py's shard of one all-reduces its outputs)."""
    cos: torch.Tensor
    sin: torch.Tensor
    positions: torch.Tensor

    def __init__(self, model: Any, batch: int, max_len: int, cache: bool = True):
        super().__init__()
        reason = refusal(model, max_len)
        if reason is not None:
            raise FusedRefusal(reason)
        config, inner = model.config, model.model
        attention = None
        if config._attn_implementation == BLOCK_SPARSE:
            # Run as Python, outside the compiled layer: traced by dynamo, the estimated policy's capture failed on an
            # H100 (a host copy in the graph, most likely the block tables the adapter caches on the device, rebuilt).
            attention = torch.compiler.disable(ALL_ATTENTION_FUNCTIONS[BLOCK_SPARSE])
        self.embed, self.norm, self.lm_head = inner.embed_tokens, inner.norm, model.lm_head
        self.eps, self.max_len = config.rms_norm_eps, max_len
        self.layers = nn.ModuleList(
            self.layer_class(layer, i, config, attention, window)
            for i, (layer, window) in enumerate(zip(inner.layers[: config.num_hidden_layers], windows(config)))
        )
        weight = self.embed.weight
        positions = torch.arange(max_len, device=weight.device)
        with torch.no_grad():  # the model's own rotary module, once for every position of the cache
            cos, sin = inner.rotary_emb(weight[:1], positions[None])
        self.register_buffer("cos", cos[0], persistent=False)
        self.register_buffer("sin", sin[0], persistent=False)
        self.register_buffer("positions", positions, persistent=False)
        self.caches: list[tuple[torch.Tensor, torch.Tensor] | None] = [
            (
                weight.new_zeros(batch, layer.kv_heads, max_len, layer.head_dim),
                weight.new_zeros(batch, layer.kv_heads, max_len, layer.head_dim),
            )
            if cache and layer.has_attention
            else None
            for layer in self.layers
        ]
        self.capture_refusal = capture_refusal(model)
        """Why this forward cannot be captured in a CUDA Graph, or None."""

    def forward(self, ids: torch.Tensor, position: int = 0, use_cache: bool = True, logits_to_keep: int = 0):
        """Logits [b, s or logits_to_keep, vocab] of ids [b, s] at positions position..position+s-1.

        With use_cache the step's keys and values go into the static cache and attention reads
        every position written so far; without, it reads the step's own (a prefill from 0).
        """
        s = ids.shape[1]
        if position + s > self.max_len:
            raise ValueError(f"positions up to {position + s} do not fit a {self.max_len}-position cache")
        if not use_cache and position:
            raise ValueError("a step after position 0 needs the cache")
        cos, sin = self.cos[position : position + s], self.sin[position : position + s]
        positions = self.positions[None, position : position + s]
        h = self.embed(ids)
        for layer, cache in zip(self.layers, self.caches):
            h = layer(h, cos, sin, position, cache if use_cache else None, positions)
        h = rms_norm(h[:, -logits_to_keep:], self.norm.weight, self.eps)
        return self.lm_head(h)

    def compile_layers(self) -> None:
        """torch.compile every layer's forward (static shapes: a serving engine's fused elementwise kernels)."""
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 2 * len(self.layers))
        for layer in self.layers:
            layer.compile(dynamic=False)
