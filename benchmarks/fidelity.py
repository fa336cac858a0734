"""Issues 4 and 12's benchmark, one round: is the harness fast enough that the method decides the result?

On one GPU: the ceilings (device-to-device copy bandwidth, bf16 matmul rate), then 50 % layer_drop
(ShortGPT drop-50), 50 % width (LLM-Pruner width-50) and 2:4 sparsity (SparseGPT 2-4, on sparse tensor
cores) on Llama-3.1-8B shapes with random bf16 weights (calibrated selections prune with their shape
stand-in) in the `reference` scenarios (prefill bs=1/4096 and bs=8/1024, decode bs=1/ctx 4096 and
bs=16/ctx 1024), each in the execution modes asked for (eager: transformers' forward; graph: prunereg's
CUDA-Graph harness; compiled: graph on a torch.compile'd forward; fused: prunereg's own fused forward,
captured), dense and pruned interleaved within each pair. Saved evaluations go to OUT/ (ingestable;
file names differ by mode); ceilings and the kernel-time profiles of the dense model to OUT/ceilings.json
and OUT/profile-<mode>.json. `benchmarks/fidelity_report.py` turns two rounds into the committed table.

Usage (device machine, repository root on PYTHONPATH as `prunereg`):
    python3 benchmarks/fidelity.py OUT [--modes graph eager] [--scenarios NAME ...] [--repeats N] [--profile]
        [--points shortgpt:drop-50 llm-pruner:width-50 sparsegpt-2-4:2-4@prefill-b8-s1024 ...]
(a point's own scenarios after @, comma-separated, replace --scenarios for it)
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import defaultdict
from functools import partial
from pathlib import Path

import torch

from prunereg.evaluate import apply_point, evaluate, params_to_run
from prunereg.harness import fused
from prunereg.harness.latency import FusedWorkload, StaticWorkload, release
from prunereg.harness.models import load_model
from prunereg.spec.catalog import Phase, Scenario, suites
from prunereg.spec.results import SavedEvaluation
from prunereg.spec.validate import validate_file

MODEL = "llama-3.1-8b"
POINTS = {"shortgpt": "drop-50", "llm-pruner": "width-50", "sparsegpt-2-4": "2-4"}
"""Submission slug (submissions/<slug>.json) -> the operating point measured."""
WIDTH_PROFILED = ("llm-pruner", "width-50")
"""The width point whose fused decode step the profile also times kernel by kernel."""
REPEATS = {"eager": 15, "graph": 30, "compiled": 30, "fused": 30}


def median_ms(fn, repeats: int = 20) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def ceilings() -> dict[str, float]:
    """Copy bandwidth counting read + write (4 GiB each way) and the bf16 matmul rate at 8192^3."""
    src = torch.randn(1 << 31, dtype=torch.bfloat16, device="cuda")
    dst = torch.empty_like(src)
    copy_ms = median_ms(partial(dst.copy_, src))
    del src, dst
    a, b = (torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda") for _ in range(2))
    mm_ms = median_ms(lambda: a @ b)
    return {"copy_bytes_per_s": 2 * (1 << 32) / (copy_ms / 1e3), "matmul_flops": 2 * 8192**3 / (mm_ms / 1e3)}


DECODE = Scenario(phase=Phase.decode, batch_size=1, seq_len=4096)
"""The decode scenario of issue 12's targets, profiled in every mode."""
KERNEL_KINDS = (
    ("attention", ("flash", "fmha", "attention", "sdpa", "cudnn")),
    ("GEMM", ("gemm", "gemv", "cutlass", "sm90_xmma", "nvjet", "matmul", "dot_kernel")),
    ("copy/cast", ("copy", "cast", "index", "cat", "fill")),
)


def kernel_times(work, repeats: int = 5, top: int = 6) -> dict[str, float]:
    """Kernel time per kind and the `top` kernels, in ms per uncaptured step of `work` (after one step that
    compiles where it must)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    work.step()
    torch.cuda.synchronize()
    with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(repeats):
            work.step()
        torch.cuda.synchronize()
    kinds: dict[str, float] = defaultdict(float)
    kernels = [event for event in prof.key_averages() if event.device_type.name == "CUDA"]
    for event in kernels:
        name = event.key.lower()
        kind = next((k for k, words in KERNEL_KINDS if any(w in name for w in words)), "elementwise/norm/other")
        kinds[kind] += event.device_time_total / 1e3 / repeats
    for event in sorted(kernels, key=lambda e: -e.device_time_total)[:top]:
        kinds[f"top kernel: {event.key[:70]}"] = event.device_time_total / 1e3 / repeats
    return dict(kinds)


def profile(mode: str, model, repeats: int = 5) -> dict[str, dict[str, float]]:
    """Kernel time per kind for the dense model's uncaptured steps in `mode`: where a gap to the floor goes.

    In fused mode the steps are those of the dense model's fused forward (harness/fused.py), its layers
    compiled, as prepare() builds it for a fused pair. In graph mode also the replayed step with each
    SDPA backend alone (it is chosen at capture).
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel

    out = {}
    for scenario in (
        Scenario(phase=Phase.prefill, batch_size=1, seq_len=4096),
        DECODE,
    ):
        work = (
            FusedWorkload(model, scenario, compiled=True)
            if mode == "fused"
            else StaticWorkload(model, scenario, compiled=mode == "compiled")
        )
        kinds = kernel_times(work, repeats)
        work.capture()
        kinds["step, graph replay (measured)"] = median_ms(work.step)
        del work
        for backend in (SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION) if mode == "graph" else ():
            with sdpa_kernel([backend]):
                work = StaticWorkload(model, scenario)
                work.capture()
            kinds[f"step, graph replay, {backend.name} only"] = median_ms(work.step)
            del work
        out[scenario.name] = kinds
    return out


def decode_step(model, label: str, top: int = 4) -> dict[str, float]:
    """`model`'s fused decode step (DECODE, layers compiled): its kernels uncaptured as "LABEL, kind", then its
    replay as "step, graph replay, LABEL", in ms."""
    work = FusedWorkload(model, DECODE, compiled=True)
    kinds = {f"{label}, {kind}": ms for kind, ms in kernel_times(work, top=top).items()}
    work.capture()
    return {**kinds, f"step, graph replay, {label}": median_ms(work.step)}


DECODE_ATTENTIONS = {"split-kv": "split-KV decoding", "flex": "flex decoding"}
"""fused.DECODE_ATTENTION values set against SDPA's one-query kernel in the profile -> their label."""


def decode_attention_step(model, kernel: str) -> dict[str, float]:
    """The dense model's fused decode step with `kernel` (a DECODE_ATTENTIONS key) in place of SDPA's one-query
    kernel: prunereg's own Triton split-KV kernel, or flex_attention's decoding."""
    fused.DECODE_ATTENTION = kernel
    try:
        return decode_step(model, DECODE_ATTENTIONS[kernel])
    finally:
        fused.DECODE_ATTENTION = "sdpa"


def width_decode_step(loaded) -> dict[str, float]:
    """LLM-Pruner width-50's fused decode step (WIDTH_PROFILED), labelled "width-50". Set
    against the dense step's, it shows what width removes (GEMM time) and what it keeps (every other kernel, the
    gaps between them): why its decode realization stays under 0.9."""
    spec, problems = validate_file(Path("submissions") / f"{WIDTH_PROFILED[0]}.json")
    assert spec is not None, problems
    point = next(p for p in spec.adapter.operating_points if p.name == WIDTH_PROFILED[1])
    pruned, _ = apply_point(spec, loaded, point, params=params_to_run(loaded, point))
    return decode_step(pruned, "width-50")


def point_choice(text: str) -> tuple[str, str, tuple[str, ...] | None]:
    """'slug:point' or 'slug:point@scenario,scenario' -> (slug, point, its own scenarios or None)."""
    choice, _, names = text.partition("@")
    slug, _, point = choice.partition(":")
    if POINTS.get(slug) != point:
        known = ", ".join(f"{slug}:{point}" for slug, point in POINTS.items())
        raise argparse.ArgumentTypeError(f"'{choice}' is none of {known}")
    own = tuple(name for name in names.split(",") if name) or None
    reference = [s.name for s in suites()["reference"]]
    unknown = [name for name in own or () if name not in reference]
    if unknown:
        raise argparse.ArgumentTypeError(f"{', '.join(unknown)}: not in the reference suite ({', '.join(reference)})")
    return slug, point, own


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--modes", nargs="+", default=["graph", "eager"], choices=list(REPEATS))
    parser.add_argument(
        "--points",
        nargs="+",
        type=point_choice,
        default=[(slug, point, None) for slug, point in POINTS.items()],
        metavar="SLUG:POINT[@SCENARIO,...]",
        help="submission slugs and operating points to measure, in this order, each optionally in its own scenarios "
        f"(default: all of {', '.join(f'{slug}:{point}' for slug, point in POINTS.items())})",
    )
    parser.add_argument(
        "--scenarios",
        nargs="+",
        help="scenario names from the reference suite (default: all) for points without their own",
    )
    parser.add_argument("--repeats", type=int, help="override the per-mode default")
    parser.add_argument("--profile", action="store_true", help="also profile the dense model's kernels in each mode")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    began = time.time()
    if not (args.out / "ceilings.json").exists():  # a later mode's run into the same folder keeps the first
        (args.out / "ceilings.json").write_text(json.dumps(ceilings(), indent=1) + "\n")
    print("ceilings:", (args.out / "ceilings.json").read_text().strip().replace("\n", ""), flush=True)
    for mode in args.modes:
        for slug, point, own in args.points:
            wanted = own or args.scenarios
            scenarios = tuple(s for s in suites()["reference"] if not wanted or s.name in wanted)
            spec, problems = validate_file(Path("submissions") / f"{slug}.json")
            assert spec is not None, problems
            try:  # a point that fails is reported and the round goes on: one device call, every point it can
                result = evaluate(
                    spec, MODEL, "cuda", scenarios, warmup=3, repeats=args.repeats or REPEATS[mode], mode=mode,
                    only={point},
                )  # fmt: skip
            except Exception as err:
                print(f"{time.time() - began:6.0f}s {mode:8} {point:9} FAILED {type(err).__name__}: {err}", flush=True)
                release([])  # the failed point's models
                continue
            SavedEvaluation(submission=spec, result=result).save(args.out)
            for lat in result.points[0].latency:
                print(
                    f"{time.time() - began:6.0f}s {mode:8} {point:9} {lat.scenario.name:17} {lat.median:8.2f} ms "
                    f"dense {lat.dense_median:8.2f} ms  speedup {lat.speedup:.2f}/{lat.theoretical_speedup:.2f}  "
                    f"{lat.execution}{' FALLBACK ' + lat.fallback if lat.fallback else ''}",
                    flush=True,
                )
            release([])  # this point's models, before the next one loads
    for mode in args.modes if args.profile else ():
        if mode != "eager":
            save_profile(mode, args.out)


def save_profile(mode: str, out: Path) -> None:
    """OUT/profile-MODE.json; in fused mode then the decode step with each of DECODE_ATTENTIONS and width-50's
    decode step added to it, each written as it is done, so a round cut there loses only what is left. One dense model serves
    all; a failure is printed and the round goes on."""
    loaded = load_model(MODEL, "cuda", torch.bfloat16)
    model = loaded.model
    path = out / f"profile-{mode}.json"
    try:
        kinds = profile(mode, model)
        path.write_text(json.dumps(kinds, indent=1) + "\n")
        print(f"profile, {mode} mode:", json.dumps(kinds, indent=1), flush=True)
        if mode == "fused":
            for kernel, label in DECODE_ATTENTIONS.items():
                release([])  # the compiled fused copies before, ahead of this step's
                try:
                    step = decode_attention_step(model, kernel)
                except Exception as err:  # an alternative kernel failing leaves width-50's step to measure
                    print(f"fused decode step with {label}: FAILED {type(err).__name__}: {err}", flush=True)
                    continue
                kinds[DECODE.name].update(step)
                path.write_text(json.dumps(kinds, indent=1) + "\n")
                print(f"fused decode step with {label}:", json.dumps(step, indent=1), flush=True)
            release([])
            width = width_decode_step(loaded)
            kinds[DECODE.name].update(width)
            path.write_text(json.dumps(kinds, indent=1) + "\n")
            print("width-50's fused decode step:", json.dumps(width, indent=1), flush=True)
    except Exception as err:
        print(f"profile, {mode} mode: FAILED {type(err).__name__}: {err}", flush=True)
    finally:
        del model, loaded
        release([])


if __name__ == "__main__":
    main()
