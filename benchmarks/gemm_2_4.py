"""One GEMM, dense against 2:4: where PyTorch's semi-structured millisecond per call goes (issue 12, part 2).

On an H200 the 2:4 path measured about 1 ms per call at every token count: setup, not a kernel. For each
Llama-3.1-8B projection shape (from the catalog) and token count 1, 2, 4 … 8192, bf16 on CUDA, this times:

  dense        F.linear on the masked dense weight (what the 2:4 model is compared against)
  adapter      exactly what semi_structured_2_4 runs: a SparseLinear holding to_sparse(weight); on cuSPARSELt
               (compute capability 9.0) the prunereg::sparse_linear_2_4 op, padding inside each call
  cslt-cached  torch._cslt_sparse_mm on a weight compressed once, algorithm and split-K searched once per shape
               and token count (semi_structured.search), input held padded to 8 rows as a static-shape engine would
  torchao      torchao.sparsity.sparsify_(…, semi_sparse_weight()), where torchao imports

Per case: CUDA events around each of --repeats calls after --warmup (median, p20, p80; host work between
the events counts, as it does in a model) and around all of them back to back (host work hidden where the
GPU is the slower side); with --graph the same again replaying one call captured in a CUDA Graph (no host
work left). For --profile-tokens, a torch.profiler trace of --profile-calls calls splits each case into CPU
op time (plan creation and the CUDA runtime calls show here) and device kernel time (compression, padding,
transposes and the GEMM show here). Each sparse case's output is checked against dense.

    python benchmarks/gemm_2_4.py --dry-run                 # the cases and shapes, no GPU
    python benchmarks/gemm_2_4.py --out DIR [--graph]       # gemm_2_4.json, gemm_2_4.md, traces/ in DIR
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from prunereg.spec.catalog import ModelArchitecture, models

CASES = ("dense", "adapter", "cslt-cached", "torchao")
TOKENS = tuple(2**i for i in range(14))  # 1 … 8192
DENSE_MIN_ROWS = 8  # cuSPARSELt's smallest dense operand for bf16 (SparseSemiStructuredTensorCUSPARSELT)
Call = Callable[[], torch.Tensor]


@dataclass(frozen=True)
class Shape:
    """One projection GEMM: y = x·Wᵀ with W of out_features × in_features; several projections may share it."""

    name: str
    out_features: int
    in_features: int


def projection_shapes(arch: ModelArchitecture) -> list[Shape]:
    """Every distinct weight shape of one decoder layer: separate (as transformers runs them) and fused."""
    h, i = arch.hidden_size, arch.intermediate_size
    q, kv = arch.num_attention_heads * arch.head_dim, arch.num_key_value_heads * arch.head_dim
    named = [
        ("q_proj", q, h), ("k_proj", kv, h), ("v_proj", kv, h), ("qkv (fused)", q + 2 * kv, h), ("o_proj", h, q),
        ("gate_proj", i, h), ("up_proj", i, h), ("gate_up (fused)", 2 * i, h), ("down_proj", h, i),
    ]  # fmt: skip
    merged: dict[tuple[int, int], list[str]] = {}
    for name, out_features, in_features in named:
        merged.setdefault((out_features, in_features), []).append(name)
    return [Shape(" · ".join(names), n, k) for (n, k), names in merged.items()]


@dataclass
class Timing:
    """Microseconds per call."""

    median_us: float
    p20_us: float
    p80_us: float
    back_to_back_us: float


@dataclass
class Result:
    shape: str
    out_features: int
    in_features: int
    tokens: int
    case: str
    backend: str = ""
    skipped: str | None = None
    max_rel_err: float | None = None
    eager: Timing | None = None
    graph: Timing | None = None
    graph_error: str | None = None
    profile: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def time_calls(fn: Call, warmup: int, repeats: int) -> Timing:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    pairs = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(repeats)]
    for start, end in pairs:
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    per_call = [start.elapsed_time(end) * 1e3 for start, end in pairs]
    first, last = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    first.record()
    for _ in range(repeats):
        fn()
    last.record()
    torch.cuda.synchronize()
    deciles = statistics.quantiles(per_call, n=10)
    return Timing(statistics.median(per_call), deciles[1], deciles[7], first.elapsed_time(last) * 1e3 / repeats)


def captured(fn: Call) -> Call:
    """One call of fn captured in a CUDA Graph; replaying it returns the graph's own output tensor."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()

    def replay() -> torch.Tensor:
        graph.replay()
        return out

    return replay


def _device_us(event: Any) -> float:
    """A profiler average's device time: the attribute was renamed from cuda_ to device_ in torch 2.4."""
    total = getattr(event, "device_time_total", None)
    return float(total if total is not None else getattr(event, "cuda_time_total", 0.0))


def profile_calls(fn: Call, calls: int, trace: Path | None) -> dict[str, Any]:
    """Host and device time of `calls` calls, per call: the CPU ops (self time) and the kernels."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
        wall = time.perf_counter() - start
    if trace is not None:
        trace.parent.mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(str(trace))
    kernels, cpu_ops = [], []
    for event in prof.key_averages():
        if event.device_type == DeviceType.CUDA:
            kernels.append({"name": event.key, "count": event.count, "device_us_per_call": _device_us(event) / calls})
        else:
            cpu_ops.append(
                {
                    "name": event.key,
                    "count": event.count,
                    "self_cpu_us_per_call": event.self_cpu_time_total / calls,
                    "cpu_us_per_call": event.cpu_time_total / calls,
                }
            )
    kernels.sort(key=lambda k: -k["device_us_per_call"])
    cpu_ops.sort(key=lambda k: -k["self_cpu_us_per_call"])
    return {
        "calls": calls,
        "wall_us_per_call": wall * 1e6 / calls,
        "device_us_per_call": sum(k["device_us_per_call"] for k in kernels),
        "kernels": kernels,
        "cpu_ops": cpu_ops[:25],
    }


def adapter_case(masked: torch.Tensor) -> tuple[nn.Module | None, str]:
    """The body of SemiStructured24.apply's loop for one Linear: the module it leaves and its kernel_of."""
    from prunereg.adapters.semi_structured import SparseLinear, kernel_of, to_sparse

    linear = nn.Linear(masked.shape[1], masked.shape[0], bias=False, device=masked.device, dtype=masked.dtype)
    sparse = to_sparse(masked)
    if sparse is None:
        return None, "to_sparse gave None: the adapter would run this shape as masked dense"
    return SparseLinear.holding(linear, sparse), kernel_of(linear)


def torchao_case(masked: torch.Tensor) -> tuple[nn.Module | None, str]:
    """torchao's semi-sparse weight on one Linear, or None and why not."""
    try:
        torchao = importlib.import_module("torchao")
        sparsity = importlib.import_module("torchao.sparsity")
    except ImportError as error:
        return None, f"torchao does not import: {error}"
    linear = nn.Linear(masked.shape[1], masked.shape[0], bias=False, device=masked.device, dtype=masked.dtype)
    linear.weight.data.copy_(masked)
    model = nn.Sequential(linear)  # sparsify_ swaps the weights of a model's submodules
    try:
        sparsity.sparsify_(model, sparsity.semi_sparse_weight())
    except Exception as error:  # a torchao built for another torch fails in many ways; the other cases still run
        return None, f"torchao {torchao.__version__} semi_sparse_weight failed: {type(error).__name__}: {error}"
    weight = next(iter(model.parameters()))
    return model, f"torchao {torchao.__version__}: {type(weight).__name__}"


class CachedCslt:
    """cuSPARSELt with its per-weight work done once: compressed weight, and its searched configuration per token count."""

    def __init__(self, masked: torch.Tensor) -> None:
        self.compressed = torch._cslt_compress(masked)
        self.configs: dict[int, tuple[int, int, int]] = {}

    def call(self, x: torch.Tensor, tokens: int) -> Call:
        """y[:tokens] = x·Wᵀ from an input buffer padded to cuSPARSELt's minimum rows; the result is row-major."""
        from prunereg.adapters.semi_structured import search

        rows = -(-tokens // DENSE_MIN_ROWS) * DENSE_MIN_ROWS
        padded = torch.zeros(rows, x.shape[-1], device=x.device, dtype=x.dtype)
        padded[:tokens] = x.reshape(tokens, -1)
        dense_t = padded.t()
        if tokens not in self.configs:
            self.configs[tokens] = search(self.compressed, padded)
        alg_id, split_k, split_k_mode = self.configs[tokens]

        def run() -> torch.Tensor:
            return torch._cslt_sparse_mm(
                self.compressed,
                dense_t,
                transpose_result=True,
                alg_id=alg_id,
                split_k=split_k,
                split_k_mode=split_k_mode,
            )[:tokens]

        return run


def relative_error(out: torch.Tensor, reference: torch.Tensor) -> float:
    out = out.reshape(reference.shape).float()
    return float((out - reference.float()).abs().max() / reference.float().abs().max().clamp_min(1e-12))


def environment() -> dict[str, Any]:
    info: dict[str, Any] = {"torch": torch.__version__, "python": platform.python_version()}
    if torch.cuda.is_available():
        info |= {
            "device": torch.cuda.get_device_name(),
            "capability": ".".join(map(str, torch.cuda.get_device_capability())),
            "cuda": torch.version.cuda,
            "cusparselt": torch.backends.cusparselt.version() if torch.backends.cusparselt.is_available() else None,
        }
    return info


def run(args: argparse.Namespace, shapes: list[Shape], save: Callable[[list[Result]], None]) -> list[Result]:
    """Every case of every shape, saved after each shape: a run killed by its time limit keeps what it timed."""
    from prunereg.adapters.semi_structured import mask_2_4

    device, dtype = torch.device("cuda"), torch.bfloat16
    results: list[Result] = []
    for shape in shapes:
        torch.manual_seed(0)
        weight = torch.randn(shape.out_features, shape.in_features, device=device, dtype=dtype)
        masked = weight * mask_2_4(weight)
        modules: dict[str, tuple[nn.Module | None, str]] = {"adapter": adapter_case(masked)}
        if "torchao" in args.cases:
            modules["torchao"] = torchao_case(masked)
        cached = CachedCslt(masked) if "cslt-cached" in args.cases else None
        for tokens in args.tokens:
            x = torch.randn(1, tokens, shape.in_features, device=device, dtype=dtype)
            reference = F.linear(x, masked)
            for case in args.cases:
                result = Result(shape.name, shape.out_features, shape.in_features, tokens, case)
                try:
                    fn = case_call(case, x, masked, modules, cached, result)
                    if fn is not None:
                        measure(fn, result, reference, args)
                except RuntimeError as error:  # one failing case must not cost the run the others
                    result.skipped = f"failed: {str(error).splitlines()[0]}"
                results.append(result)
                print(summary(result), flush=True)
        save(results)
    return results


def case_call(
    case: str,
    x: torch.Tensor,
    masked: torch.Tensor,
    modules: dict[str, tuple[nn.Module | None, str]],
    cached: CachedCslt | None,
    result: Result,
) -> Call | None:
    """The call to time for one case, its backend written to result; None where the case cannot run here."""
    if case == "dense":
        result.backend = "cuBLAS (F.linear)"
        return lambda: F.linear(x, masked)
    if case == "cslt-cached":
        assert cached is not None
        fn = cached.call(x, result.tokens)
        result.backend = "cuSPARSELt (_cslt_sparse_mm)"
        result.extra["alg_id"], result.extra["split_k"], result.extra["split_k_mode"] = cached.configs[result.tokens]
        return fn
    module, result.backend = modules[case]
    if module is None:
        result.skipped = result.backend
        return None
    return lambda: module(x)


def measure(fn: Call, result: Result, reference: torch.Tensor, args: argparse.Namespace) -> None:
    with torch.inference_mode():
        result.max_rel_err = relative_error(fn(), reference)
        result.eager = time_calls(fn, args.warmup, args.repeats)
        if args.graph:
            try:
                result.graph = time_calls(captured(fn), args.warmup, args.repeats)
            except RuntimeError as error:
                result.graph_error = str(error).splitlines()[0]
        if result.tokens in args.profile_tokens:
            slug = f"{result.out_features}x{result.in_features}-t{result.tokens}-{result.case}"
            result.profile = profile_calls(fn, args.profile_calls, args.out / "traces" / f"{slug}.json.gz")


def summary(r: Result) -> str:
    head = f"{r.shape:>30} {r.out_features:>5}×{r.in_features:<5} tokens {r.tokens:>4} {r.case:>11}"
    if r.skipped or r.eager is None:
        return f"{head}: skipped ({r.skipped})"
    graph = (
        f", graph {r.graph.median_us:.1f} µs"
        if r.graph
        else (f", graph failed: {r.graph_error}" if r.graph_error else "")
    )
    return (
        f"{head}: {r.eager.median_us:.1f} µs (p20 {r.eager.p20_us:.1f}, p80 {r.eager.p80_us:.1f}){graph} [{r.backend}]"
    )


def markdown(results: list[Result], env: dict[str, Any], args: argparse.Namespace) -> str:
    """Per shape: µs per call (median, eager and graph) and speedup over dense at the same token count."""
    sparse = [c for c in args.cases if c != "dense"]
    modes = ["eager", "graph"] if args.graph else ["eager"]
    by_key = {(r.shape, r.tokens, r.case): r for r in results}
    lines = [
        f"Per-GEMM 2:4 against dense, bf16, {args.model} projection shapes: `python benchmarks/gemm_2_4.py"
        f"{' --graph' if args.graph else ''}` (warmup {args.warmup}, {args.repeats} repeats; median µs per call between CUDA events around each call, "
        "speedup = dense µs / case µs in the same mode).",
        "",
        "Environment: " + ", ".join(f"{k} {v}" for k, v in env.items()) + ".",
        "",
    ]
    for shape in dict.fromkeys(r.shape for r in results):
        some = next(r for r in results if r.shape == shape)
        lines += [f"### {shape} ({some.out_features} × {some.in_features})", ""]
        header = ["tokens"] + [f"{c} {m}" for m in modes for c in ["dense", *sparse]]
        lines += ["| " + " | ".join(header) + " |", "|" + "--:|" * len(header)]
        for tokens in args.tokens:
            cells = [str(tokens)]
            for mode in modes:
                dense_r = by_key.get((shape, tokens, "dense"))
                dense_t = getattr(dense_r, mode, None) if dense_r else None
                for case in ["dense", *sparse]:
                    cells.append(cell(by_key.get((shape, tokens, case)), mode, dense_t))
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    skipped = {f"{r.case}: {r.skipped}" for r in results if r.skipped}
    if skipped:
        lines += ["Skipped: " + "; ".join(sorted(skipped)) + ".", ""]
    profiled = [r for r in results if r.profile]
    if profiled:
        lines += [
            "### Where a call's time goes (torch.profiler)",
            "",
            "Events: median µs per call above. Host: wall µs per call under the profiler. Device: kernel µs per "
            "call. CPU ops and kernels: self time per call (`cudaDeviceSynchronize` is the benchmark's own, once per "
            "profile).",
            "",
            "| shape | tokens | case | events µs | host µs | device µs | top CPU ops (self µs) | kernels (µs) |",
            "|---|--:|---|--:|--:|--:|---|---|",
        ]
        for r in profiled:
            assert r.profile is not None and r.eager is not None
            ops = "; ".join(f"{code(o['name'])} {o['self_cpu_us_per_call']:.1f}" for o in r.profile["cpu_ops"][:4])
            kernels = "; ".join(f"{code(k['name'])} {k['device_us_per_call']:.1f}" for k in r.profile["kernels"][:3])
            lines.append(
                f"| {r.shape} | {r.tokens} | {r.case} | {r.eager.median_us:.1f} | {r.profile['wall_us_per_call']:.1f} "
                f"| {r.profile['device_us_per_call']:.1f} | {ops} | {kernels} |"
            )
        lines.append("")
    wrong = [r for r in results if r.max_rel_err is not None and r.max_rel_err > args.tolerance]
    if wrong:
        lines += [f"Output differs from dense by more than {args.tolerance} (max |Δ| / max |y|):"]
        lines += [f"- {r.shape}, {r.tokens} tokens, {r.case}: {r.max_rel_err:.3g}" for r in wrong]
    return "\n".join(lines) + "\n"


def code(name: str, width: int = 60) -> str:
    """A kernel or op name as Markdown code: its template brackets would otherwise read as HTML."""
    short = name if len(name) <= width else name[: width - 1] + "…"
    return "`" + short.replace("|", "\\|").replace("`", "'") + "`"


def cell(r: Result | None, mode: str, dense: Timing | None) -> str:
    if r is None or r.skipped:
        return "–"
    timing: Timing | None = getattr(r, mode)
    if timing is None:
        return "capture failed" if mode == "graph" and r.graph_error else "–"
    if r.case == "dense" or dense is None:
        return f"{timing.median_us:.1f}"
    return f"{timing.median_us:.1f} ({dense.median_us / timing.median_us:.2f}×)"


def dry_run(args: argparse.Namespace, shapes: list[Shape]) -> None:
    print(f"{args.model}: {len(shapes)} distinct projection shapes (out_features × in_features)")
    for shape in shapes:
        print(f"  {shape.name:>30}  {shape.out_features:>5} × {shape.in_features:<5}")
    print(f"tokens: {' '.join(map(str, args.tokens))}")
    print(f"cases: {' '.join(args.cases)}; CUDA Graph replay: {'yes' if args.graph else 'no'}")
    print(f"profiled token counts: {' '.join(map(str, args.profile_tokens)) or 'none'} ({args.profile_calls} calls)")
    ops = ["_cslt_compress", "_cslt_sparse_mm_search", "_cslt_sparse_mm"]
    print(
        f"torch {torch.__version__}: "
        + ", ".join(f"torch.{op} {'present' if hasattr(torch, op) else 'MISSING'}" for op in ops)
        + f", torch._C._cusparselt.mm_search {'present' if hasattr(torch._C, '_cusparselt') else 'MISSING'}"
    )
    try:
        importlib.import_module("torchao")
        print("torchao imports")
    except ImportError as error:
        print(f"torchao case will be skipped: {error}")
    count = len(shapes) * len(args.tokens) * len(args.cases)
    print(f"{count} timed cases{' (each also graph-replayed)' if args.graph else ''}; nothing measured (--dry-run)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="folder for gemm_2_4.json, gemm_2_4.md and traces/")
    parser.add_argument("--model", default="llama-3.1-8b", help="catalog model whose projection shapes are timed")
    parser.add_argument("--tokens", type=int, nargs="+", default=list(TOKENS))
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--graph", action="store_true", help="also time each case replayed from a CUDA Graph")
    parser.add_argument("--profile-tokens", type=int, nargs="*", default=[1, 128, 8192])
    parser.add_argument("--profile-calls", type=int, default=5)
    parser.add_argument("--tolerance", type=float, default=2e-2, help="flag outputs this far from dense")
    parser.add_argument("--dry-run", action="store_true", help="print the cases and shapes only; needs no GPU")
    args = parser.parse_args()
    catalog = models()
    if args.model not in catalog:
        sys.exit(f"--model: {args.model!r} is not in the catalog ({', '.join(catalog)})")
    if "dense" not in args.cases:
        args.cases = ["dense", *args.cases]  # every speedup is against it
    shapes = projection_shapes(catalog[args.model])
    if args.dry_run:
        dry_run(args, shapes)
        return
    if args.out is None:
        sys.exit("--out is required unless --dry-run")
    if not torch.cuda.is_available():
        sys.exit("gemm_2_4.py times CUDA kernels and needs a GPU (--dry-run prints the cases without one)")
    env = environment()
    print(json.dumps(env), flush=True)
    settings = {k: v for k, v in vars(args).items() if k != "out"}  # no machine paths in committed output
    args.out.mkdir(parents=True, exist_ok=True)

    def save(results: list[Result]) -> None:
        payload = {"environment": env, "settings": settings, "results": [asdict(r) for r in results]}
        (args.out / "gemm_2_4.json").write_text(json.dumps(payload, indent=1))
        (args.out / "gemm_2_4.md").write_text(markdown(results, env, args))

    run(args, shapes, save)
    print("wrote gemm_2_4.json, gemm_2_4.md and traces/ into --out")


if __name__ == "__main__":
    main()
