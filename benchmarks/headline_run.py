"""Every claimed operating point of one shape class timed in ONE process (benchmarks/h200_headline.sh).

One process per model, not one `prunereg evaluate` per submission: the imports and the CUDA context are paid
once, which on a lent GPU is about a minute of a ten-minute call. Dense first, then each line of PLAN (`SLUG
POINT ...`, as benchmarks/claimed_points.py prints them) in the suite `headline`; each saved evaluation is
written to OUT as soon as its submission is done (ingestable with `prunereg ingest`), so a run cut by a timeout
keeps what it finished. A submission that fails is printed with its reason and the run goes on.

A CUDA graph capture that fails (router-tuning's per-token routing cannot be captured, so its run falls back to eager
mode) leaves the process's CUDA RNG marked as capturing: every later random draw raises "Offset increment outside
graph capture encountered unexpectedly" (first H100 headline run, results/h100-headline/log-llama-3.1-8b-2.txt). So
after a submission whose run fell back (on a CPU too: a fresh process costs seconds), the rest of PLAN is written
back to PLAN and the process exits with RESTART; benchmarks/h200_headline.sh starts a fresh one on it.

    python3 benchmarks/headline_run.py MODEL PLAN OUT [--mode graph] [--repeats 10] [--warmup 2] [--with-dense]
"""

from __future__ import annotations

import argparse
import gc
import time
from pathlib import Path
from typing import get_args

import torch

from prunereg.evaluate import evaluate
from prunereg.spec.catalog import suites
from prunereg.spec.results import ExecutionMode, SavedEvaluation
from prunereg.spec.validate import validate_file

SUBMISSIONS = Path("submissions")
RESTART = 3


def run(
    model: str,
    out: Path,
    plan: dict[str, list[str]],
    device: str = "cuda",
    mode: ExecutionMode = "graph",
    repeats: int = 10,
    warmup: int = 2,
) -> dict[str, list[str]]:
    """Times the plan's submissions in order; returns what is left of it after a run that fell back."""
    began, left = time.time(), dict(plan)
    for slug, points in plan.items():
        del left[slug]
        spec, problems = validate_file(SUBMISSIONS / f"{slug}.json")
        if spec is None or problems:
            print(f"{slug}: FAILED: does not validate: {problems[0]}", flush=True)
            continue
        try:
            result = evaluate(
                spec, model, device, suites()["headline"], warmup, repeats, mode, only=set(points), folder=SUBMISSIONS
            )
        except Exception as err:  # one submission's failure must not cost the others' measurements
            print(f"{time.time() - began:5.0f}s {slug}: FAILED {type(err).__name__}: {err}", flush=True)
            continue
        finally:
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        SavedEvaluation(submission=spec, result=result).save(out)
        for point in result.points:
            cells = "  ".join(
                f"{lat.scenario.name} {lat.speedup:.2f}/{lat.theoretical_speedup:.2f}"
                + (f" FALLBACK {lat.execution}" if lat.fallback else "")
                for lat in point.latency
            )
            print(f"{time.time() - began:5.0f}s {slug} {point.operating_point}: {cells}", flush=True)
        if left and any(lat.fallback for point in result.points for lat in point.latency):
            return left
    return {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("plan", type=Path, help="lines 'SLUG POINT ...' (benchmarks/claimed_points.py MODEL)")
    parser.add_argument("out", type=Path)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--mode", default="graph", choices=get_args(ExecutionMode))
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--with-dense", action="store_true", help="time the dense model first (the first process)")
    args = parser.parse_args()
    plan = {slug: points for slug, *points in (line.split() for line in args.plan.read_text().splitlines() if line)}
    plan = {"dense": ["dense"], **plan} if args.with_dense else plan
    left = run(args.model, args.out, plan, args.device, args.mode, args.repeats, args.warmup)
    if left:
        args.plan.write_text("".join(f"{slug} {' '.join(points)}\n" for slug, points in left.items()))
        print(f"a run fell back: {len(left)} submissions left for a fresh process", flush=True)
        raise SystemExit(RESTART)


if __name__ == "__main__":
    main()
