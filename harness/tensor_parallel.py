"""Tensor-parallel mode: the fused forward (harness/fused.py) of one model sharded over N processes.

Megatron-style, one process per GPU (NCCL) or per CPU share (gloo), each decoder layer cut from
what the pruned layer holds:

- q/k/v and gate/up are column-parallel: a rank holds whole KV groups with their query heads, and a
  slice of the MLP channels, so attention and the activation run on local data;
- o_proj and down_proj are row-parallel: each rank's product is a partial sum, all-reduced, one
  all-reduce after attention and one after the MLP; their bias is added once, after it;
- everything else is replicated: embedding, norms, rotary tables, SliceGPT's shortcut rotations and
  lm_head (every rank computes the whole logits, so none need gathering; the cost model prices the
  lm_head GEMM whole on every rank).

A pruned dimension that does not divide by N is split unevenly, the first ranks one unit more (14
KV groups over 4 ranks: 4, 4, 3, 3); a rank may hold none of a layer's KV groups (6 groups over 8),
and then joins that layer's all-reduce with zeros. `sharding` records the split of every layer
(spec.results.Sharding, saved with the run); the cost model prices the largest share, since the
slowest rank decides (spec/costmodel.py). Low-rank projections shard their second factor's rows
(column-parallel, the first factor replicated) or their first factor's input columns (row-parallel,
the second replicated). Masked weights (2:4 and unstructured) shard like dense ones: the shards are
cut on the host, so 2:4 runs as masked dense here. Token routing and block-sparse attention are
refused (`TensorParallelRefusal`): their routers and block masks are not split.

`Ranks` starts the N processes once (torch.multiprocessing, spawn) and runs tasks on all of them;
the shards are made in the calling process, where the model is, and reach the ranks through shared
memory. On a CPU the shards run uncaptured and uncompiled; on CUDA each is captured in a CUDA Graph
(its layers compiled, the all-reduces left out of the compiled code) like fused mode.
"""

from __future__ import annotations

import copy
import datetime
import os
import queue
import tempfile
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.sparse import SparseSemiStructuredTensor

from prunereg.adapters.low_rank import LowRankLinear
from prunereg.adapters.sparse_attention import NAME as BLOCK_SPARSE
from prunereg.adapters.sublayer_drop import DroppedAttention, DroppedMLP
from prunereg.adapters.token_routing import RoutedMLP
from prunereg.spec.catalog import Phase, Scenario
from prunereg.spec.results import GpuState, LayerSharding, Sharding

from .fingerprint import gpu_state
from .fused import FusedLayer, FusedModel, FusedRefusal
from .latency import FusedWorkload, Timer, scenario_ids

TASK_TIMEOUT_S = 3600.0
"""How long the calling process waits for the ranks to finish one task (a 70B model's shards included)."""


FAILURE_GRACE_S = 10.0
"""How long the other ranks may take to fail too once one has; then they are stopped (a group is not reused)."""


class TensorParallelRefusal(FusedRefusal):
    """Why a model cannot run tensor-parallel here."""


class TensorParallelError(RuntimeError):
    """A rank failed, or died: the first line of what it raised."""


def split(units: int, ranks: int) -> list[int]:
    """`units` over `ranks` as evenly as whole units allow, the first ranks one more: split(14, 4) = [4, 4, 3, 3]."""
    return [units // ranks + (r < units % ranks) for r in range(ranks)]


def _bounds(units: int, ranks: int, rank: int) -> tuple[int, int]:
    sizes = split(units, ranks)
    start = sum(sizes[:rank])
    return start, start + sizes[rank]


def _linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    """An nn.Linear holding these tensors as they are (no initialization of a fresh one, no copy)."""
    linear = nn.Linear.__new__(nn.Linear)
    nn.Module.__init__(linear)
    linear.in_features, linear.out_features = weight.shape[1], weight.shape[0]
    linear.weight = nn.Parameter(weight, requires_grad=False)
    linear.register_parameter("bias", None if bias is None else nn.Parameter(bias, requires_grad=False))
    return linear


def _dense(module: Any, path: str) -> None:
    if isinstance(getattr(module, "weight", None), SparseSemiStructuredTensor):
        raise TensorParallelRefusal(f"{path} is on sparse tensor cores; tensor-parallel mode shards dense weights")
    if type(module) not in (nn.Linear, LowRankLinear):
        raise TensorParallelRefusal(f"{path} is a {type(module).__name__}, not a Linear or low-rank pair")


def column(module: Any, start: int, end: int, path: str) -> nn.Linear | LowRankLinear:
    """Output features start..end of a Linear, or of a low-rank pair (its second factor's rows)."""
    _dense(module, path)
    if isinstance(module, LowRankLinear):
        return LowRankLinear(module.a, _rows(module.b, start, end))
    return _rows(module, start, end)


def _rows(linear: nn.Linear, start: int, end: int) -> nn.Linear:
    bias = None if linear.bias is None else linear.bias.detach()[start:end]
    return _linear(linear.weight.detach()[start:end], bias)


def row(module: Any, start: int, end: int, path: str) -> nn.Linear | LowRankLinear | None:
    """Input features start..end of a Linear or low-rank pair (its first factor's columns), bias left out;
    None for no features."""
    _dense(module, path)
    if start == end:
        return None
    if isinstance(module, LowRankLinear):
        return LowRankLinear(_columns(module.a, start, end), _linear(module.b.weight.detach(), None))
    return _columns(module, start, end)


def _columns(linear: nn.Linear, start: int, end: int) -> nn.Linear:
    return _linear(linear.weight.detach()[:, start:end].contiguous(), None)


class RowParallel(nn.Module):
    """A row-parallel projection: this rank's partial product (zeros where it holds no input features),
    all-reduced over the ranks, the bias added once after."""

    bias: torch.Tensor | None

    def __init__(self, part: nn.Module | None, bias: torch.Tensor | None, out_features: int):
        super().__init__()
        self.part, self.out_features = part, out_features
        self.register_buffer("bias", None if bias is None else bias.detach())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.part(x) if self.part is not None else x.new_zeros(*x.shape[:-1], self.out_features)
        y = all_reduce(y)
        return y if self.bias is None else y + self.bias


@torch.compiler.disable
def all_reduce(y: torch.Tensor) -> torch.Tensor:
    """Sum over the ranks, in place; left out of compiled layers (a graph break), captured in the CUDA Graph."""
    dist.all_reduce(y)
    return y


class ShardedLayer(FusedLayer):
    """One rank's share of a decoder layer; a rank without KV groups adds zeros to the attention all-reduce."""

    def attend(self, x, cos, sin, position: int, cache) -> torch.Tensor:
        if not self.kv_heads:
            return self.o_proj(x[..., :0])
        return super().attend(x, cos, sin, position, cache)


class ShardedModel(FusedModel):
    """FusedModel of one rank's shard (`shard_view`); `placed` moves it to the rank's device and makes its cache."""

    layer_class = ShardedLayer

    def placed(self, device: torch.device, batch: int, cache: bool) -> ShardedModel:
        self.to(device)
        weight = self.embed.weight
        self.caches = [
            (
                weight.new_zeros(batch, layer.kv_heads, self.max_len, layer.head_dim),
                weight.new_zeros(batch, layer.kv_heads, self.max_len, layer.head_dim),
            )
            if cache and layer.has_attention
            else None
            for layer in self.layers
        ]
        return self


def _view(module: nn.Module, **children: nn.Module) -> Any:
    """A shallow copy of `module` with some children replaced; the module itself is left as it is."""
    view = copy.copy(module)
    view._modules = {**module._modules, **children}
    return view


def refusal(model: Any) -> str | None:
    """Why tensor-parallel mode cannot shard this model (beyond fused mode's own refusals), or None."""
    if model.config._attn_implementation == BLOCK_SPARSE:
        return "block-sparse attention's block masks are not split over ranks"
    for index, layer in enumerate(model.model.layers[: model.config.num_hidden_layers]):
        if isinstance(layer.mlp, RoutedMLP):
            return f"layer {index}'s routed MLP: token routing's router is not split over ranks"
    return None


def layer_sharding(layer: Any, ranks: int) -> LayerSharding:
    """How one decoder layer splits over `ranks`: KV groups (with their query heads) and MLP channels per rank."""
    attn, mlp = layer.self_attn, layer.mlp
    groups = heads = channels = None
    if not isinstance(attn, DroppedAttention):
        head_dim = attn.head_dim
        kv = attn.k_proj.out_features // head_dim
        per_group = attn.q_proj.out_features // head_dim // max(kv, 1)
        groups = split(kv, ranks)
        heads = [g * per_group for g in groups]
    if not isinstance(mlp, DroppedMLP):
        channels = split(mlp.gate_proj.out_features, ranks)
    return LayerSharding(kv_groups=groups, heads=heads, channels=channels)


def sharding(model: Any, ranks: int) -> Sharding:
    """The split of every layer of `model` over `ranks` (what `shard_view` cuts), to be saved with the run."""
    reason = refusal(model)
    if reason is not None:
        raise TensorParallelRefusal(reason)
    layers = model.model.layers[: model.config.num_hidden_layers]
    return Sharding(tensor_parallel=ranks, layers=[layer_sharding(layer, ranks) for layer in layers])


def shard_view(model: Any, rank: int, ranks: int) -> Any:
    """`model` as rank `rank` of `ranks` holds it: a view whose projections are that rank's shards (slices of
    the model's own weights, no copies but the row-parallel ones) and whose other modules are the model's."""
    reason = refusal(model)
    if reason is not None:
        raise TensorParallelRefusal(reason)
    layers = []
    for index, layer in enumerate(model.model.layers[: model.config.num_hidden_layers]):
        plan, path = layer_sharding(layer, ranks), f"layer {index}"
        children: dict[str, nn.Module] = {}
        if plan.kv_groups is not None:
            attn, head_dim = layer.self_attn, layer.self_attn.head_dim
            g0, g1 = _bounds(sum(plan.kv_groups), ranks, rank)
            per_group = attn.q_proj.out_features // head_dim // sum(plan.kv_groups)
            q0, q1 = g0 * per_group * head_dim, g1 * per_group * head_dim
            k0, k1 = g0 * head_dim, g1 * head_dim
            children["self_attn"] = _view(
                attn,
                q_proj=column(attn.q_proj, q0, q1, path + " q_proj"),
                k_proj=column(attn.k_proj, k0, k1, path + " k_proj"),
                v_proj=column(attn.v_proj, k0, k1, path + " v_proj"),
                o_proj=RowParallel(
                    row(attn.o_proj, q0, q1, path + " o_proj"), _bias(attn.o_proj), attn.o_proj.out_features
                ),
            )
        if plan.channels is not None:
            mlp = layer.mlp
            c0, c1 = _bounds(sum(plan.channels), ranks, rank)
            children["mlp"] = _view(
                mlp,
                gate_proj=column(mlp.gate_proj, c0, c1, path + " gate_proj"),
                up_proj=column(mlp.up_proj, c0, c1, path + " up_proj"),
                down_proj=RowParallel(
                    row(mlp.down_proj, c0, c1, path + " down_proj"), _bias(mlp.down_proj), mlp.down_proj.out_features
                ),
            )
        layers.append(_view(layer, **children))
    inner = _view(model.model, layers=nn.ModuleList(layers))
    return _view(model, model=inner)


def _bias(module: Any) -> torch.Tensor | None:
    bias = module.b.bias if isinstance(module, LowRankLinear) else module.bias
    return None if bias is None else bias.detach()


def shards(model: Any, ranks: int, batch: int, max_len: int) -> list[ShardedModel]:
    """Every rank's ShardedModel of `model`, on the model's device, without a cache (`placed` makes it)."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Initializing zero-element tensors")  # a rank without KV groups
        return [ShardedModel(shard_view(model, r, ranks), batch, max_len, cache=False) for r in range(ranks)]


@dataclass
class Rank:
    """What a task learns about the process it runs in."""

    rank: int
    ranks: int
    device: torch.device


class Ranks:
    """N processes in one torch.distributed group (NCCL on CUDA, gloo on a CPU), started once and given tasks.

    `run(fn, per_rank, *shared)` calls fn(Rank, per_rank[r], *shared) on every rank r at once and returns
    their results in rank order; fn must be importable (a module-level function). Arguments travel
    through shared memory (torch.multiprocessing), not copied per rank.
    """

    def __init__(self, ranks: int, device_type: str = "cpu", threads: int | None = None):
        if ranks < 2:
            raise ValueError(f"tensor parallelism needs 2 ranks or more, not {ranks}")
        if device_type == "cuda" and torch.cuda.device_count() < ranks:
            raise ValueError(f"{ranks} ranks asked for, but torch sees {torch.cuda.device_count()} CUDA devices")
        context = mp.get_context("spawn")
        handle, self.store = tempfile.mkstemp(prefix="prunereg-tp-")
        os.close(handle)
        os.unlink(self.store)  # the FileStore creates it
        threads = threads or max(1, torch.get_num_threads() // ranks)
        self.tasks = [context.SimpleQueue() for _ in range(ranks)]
        self.results = context.Queue()
        self.processes = [
            context.Process(
                target=_serve,
                args=(r, ranks, self.store, device_type, threads, self.tasks[r], self.results),
                daemon=True,
            )
            for r in range(ranks)
        ]
        for process in self.processes:
            process.start()
        self.ranks = ranks
        self._stop = weakref.finalize(self, _stop, self.processes, self.tasks, self.store)

    def run(self, fn: Callable, per_rank: list | None = None, *shared: Any) -> list:
        for r, tasks in enumerate(self.tasks):
            tasks.put((fn, None if per_rank is None else per_rank[r], shared))
        got: dict[int, Any] = {}
        failures: list[str] = []
        waited, patience = 0.0, TASK_TIMEOUT_S
        while len(got) + len(failures) < self.ranks:
            try:
                rank, ok, value = self.results.get(timeout=1.0)
            except queue.Empty:
                waited += 1.0
                dead = [r for r, p in enumerate(self.processes) if not p.is_alive()]
                if dead or waited > patience:  # the others of a failed rank may wait in a collective forever
                    self.close()
                    why = failures[0] if failures else f"rank {dead[0]} died" if dead else "no answer"
                    raise TensorParallelError(why) from None
                continue
            if ok:
                got[rank] = value
            else:
                failures.append(value)
                patience = min(patience, waited + FAILURE_GRACE_S)
        if failures:
            raise TensorParallelError(failures[0])
        return [got[r] for r in range(self.ranks)]

    def close(self) -> None:
        """Stop the ranks (also done when the Ranks object is collected, as after an exception)."""
        self._stop()

    def __enter__(self) -> Ranks:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _stop(processes: list, tasks: list, store: str) -> None:
    for process, queue_ in zip(processes, tasks):
        if process.is_alive():
            queue_.put(None)
    for process in processes:
        process.join(timeout=30)
        if process.is_alive():
            process.kill()
    if os.path.exists(store):
        os.unlink(store)


def _serve(rank: int, ranks: int, store: str, device_type: str, threads: int, tasks, results) -> None:
    """One rank: join the group, then run tasks until told to stop (None)."""
    torch.set_num_threads(threads)
    device = torch.device("cuda", rank) if device_type == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(
        "nccl" if device.type == "cuda" else "gloo", init_method=f"file://{store}", rank=rank,
        world_size=ranks, timeout=datetime.timedelta(seconds=TASK_TIMEOUT_S),
    )  # fmt: skip
    here = Rank(rank, ranks, device)
    while (task := tasks.get()) is not None:
        fn, mine, shared = task
        try:
            value = fn(here, *(() if mine is None else (mine,)), *shared)
            results.put((rank, True, value))
        except Exception as err:  # any failure reaches the caller as one line, with the rank that raised it
            first = (str(err).strip().splitlines() or [""])[0]
            results.put((rank, False, f"rank {rank}: {type(err).__name__}: {first}"[:300]))
        del task, fn, mine, shared
    dist.destroy_process_group()


@torch.inference_mode()
def forward_logits(here: Rank, shard: ShardedModel, ids: torch.Tensor, prefill: int) -> list[torch.Tensor]:
    """A task: logits of `ids` in one prefill without cache, then as a prefill of `prefill` tokens and one
    token at a time against the cache (what tests/test_tensor_parallel.py compares with one process)."""
    fused = shard.placed(here.device, ids.shape[0], cache=True)
    ids = ids.to(here.device)
    whole = fused(ids, use_cache=False)
    steps = [fused(ids[:, :prefill])]
    steps += [fused(ids[:, t : t + 1], position=t) for t in range(prefill, ids.shape[1])]
    return [whole.cpu(), torch.cat(steps, dim=1).cpu()]


class ShardedWorkload(FusedWorkload):
    """Fused mode's workload on one rank's shard: a decode step writes the slot after the context."""

    def __init__(self, shard: ShardedModel, here: Rank, scenario: Scenario, vocab_size: int, tokenizer=None):
        self.scenario = scenario
        prompt, token = scenario_ids(vocab_size, scenario, tokenizer)
        self.prompt, self.token = prompt.to(here.device), token.to(here.device)
        decode = scenario.phase is Phase.decode
        self.fused = shard.placed(here.device, scenario.batch_size, cache=decode)
        if decode:
            with torch.inference_mode():
                self.fused(self.prompt)  # the context, untimed
        if here.device.type == "cuda":
            self.fused.compile_layers()
        self.graph = None


@dataclass
class RankTiming:
    dense: list[float]
    pruned: list[float]
    gpu_before: GpuState | None
    gpu_after: GpuState | None


def time_shards(
    here: Rank,
    shards: tuple[ShardedModel, ShardedModel],
    scenario: Scenario,
    vocab_size: int,
    warmup: int,
    repeats: int,
    tokenizer=None,
) -> RankTiming:
    """A task: dense and pruned shards timed interleaved on this rank, every step started together on all ranks
    (a barrier before it, outside the timed region)."""
    works = [ShardedWorkload(shard, here, scenario, vocab_size, tokenizer) for shard in shards]
    if here.device.type == "cuda":
        for work in works:
            work.capture()
    timed = Timer(here.device)

    def step(work) -> float:
        dist.barrier()
        return timed(work)

    for _ in range(warmup):
        for work in works:
            step(work)
    before = gpu_state(here.device)
    samples: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for work, out in zip(works, samples):
            out.append(step(work))
    return RankTiming(*samples, gpu_before=before, gpu_after=gpu_state(here.device))


def measure_pair(
    ranks: Ranks,
    dense: Any,
    pruned: Any,
    scenario: Scenario,
    warmup: int,
    repeats: int,
    tokenizer=None,
) -> tuple[list[float], list[float], GpuState | None, GpuState | None]:
    """Dense and pruned timed tensor-parallel: each repeat's time is its slowest rank's; GPU state of rank 0."""
    max_len = scenario.seq_len + 1
    pairs = list(
        zip(
            shards(dense, ranks.ranks, scenario.batch_size, max_len),
            shards(pruned, ranks.ranks, scenario.batch_size, max_len),
        )
    )
    timings: list[RankTiming] = ranks.run(
        time_shards, pairs, scenario, dense.config.vocab_size, warmup, repeats, tokenizer
    )
    slowest = [[max(column) for column in zip(*(getattr(t, kind) for t in timings))] for kind in ("dense", "pruned")]
    return slowest[0], slowest[1], timings[0].gpu_before, timings[0].gpu_after
