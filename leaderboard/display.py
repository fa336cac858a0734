"""How registry data reads to a person: family labels, kernel notes, noise flags, GPU-state changes.

The registry's records hold data only; the words put next to it live here, once, for the site
and for the command line (`prunereg frontier` labels families with `family_label` too).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from prunereg.registry.queries import Row
from prunereg.spec.taxonomy import FAMILY_LABELS
from prunereg.spec.uncertainty import NOISY_SPREAD as NOISY_SPREAD  # its home, with the interval's threshold
from prunereg.spec.uncertainty import noise

_LABELS = {family.value: label for family, label in FAMILY_LABELS.items()}

PLAIN_KERNELS = ("dense", "causal (SDPA)", "dense (SDPA)")
"""What every dense model runs too; only other kernels are worth a note."""

NO_SPEEDUP_KERNELS = ("masked dense",)
"""Kernels that compute the pruned weights' zeros anyway: their speedup is noise around 1."""

QUALITY_TEXT = {
    "reported": "reported quality (papers' tables) × measured speed",
    "measured": "measured quality (prunereg, on the run's own model) × measured speed",
    "none": "measured speed only: no quality figure enters",
}
"""What every plot, table and section says it shows: the two kinds of quality are never on one plot or table."""


def family_label(family: str) -> str:
    """The taxonomy's name of a family, e.g. "static M, depth"; an unknown value as it is."""
    return _LABELS.get(family, family)


def kernel_note(kernels: Iterable[str]) -> str | None:
    """How the pruned GEMMs ran when it was not a plain dense kernel, e.g. "masked dense: no kernel speedup expected"."""
    shown = sorted(_algorithms_merged(set(kernels) - set(PLAIN_KERNELS)))
    if not shown:
        return None
    note = ", ".join(shown)
    return f"{note}: no kernel speedup expected" if set(shown) <= set(NO_SPEEDUP_KERNELS) else note


def unaligned_note(unaligned: Iterable[str]) -> str | None:
    """Why a point with fewer FLOPs can run slower than dense: weight rows tensor cores cannot read in 16-byte
    vectors (registry Row.unaligned), e.g. "unaligned in bf16: down_proj K = 6738"."""
    shown = list(unaligned)
    return f"unaligned in bf16: {', '.join(shown)}" if shown else None


_ALGORITHM = re.compile(r"(?P<kernel>.+), algorithm (?P<id>\d+)(?P<split> split-K \d+| segment-K)?\)")


def _algorithms_merged(kernels: set[str]) -> set[str]:
    """One entry per library with the algorithms its GEMMs ran, e.g.
    "sparse 2:4 (cuSPARSELt, algorithms 10 segment-K, 13 split-K 2, 15)"."""
    configs: dict[str, set[tuple[int, str]]] = defaultdict(set)
    others = set()
    for kernel in kernels:
        if match := _ALGORITHM.fullmatch(kernel):
            configs[match["kernel"]].add((int(match["id"]), match["split"] or ""))
        else:
            others.add(kernel)
    return others | {
        f"{k}, algorithm{'s' * (len(c) > 1)} {', '.join(f'{i}{split}' for i, split in sorted(c))})"
        for k, c in configs.items()
    }


def recovery_note(recovery: dict[str, Any] | None) -> str:
    """'recovery fine-tuning: Alpaca, 50,000,000 tokens (LoRA)' or 'one-shot': a claim's budget, in words."""
    if not recovery:
        return "one-shot"
    tokens = f", {recovery['tokens']:,} tokens" if recovery.get("tokens") else ""
    method = f" ({recovery['method']})" if recovery.get("method") else ""
    return f"recovery fine-tuning: {recovery['data']}{tokens}{method}"


def noise_reason(row: Row) -> str | None:
    """Why the row's measured speedup is too noisy to rank (spec.uncertainty.noise), or None; the same rule
    that leaves it out of the measured front (`Row.excluded`), said of its latency in every view."""
    return noise(row.speedup, row.speedup_low, row.speedup_high, row.spread)


def noisy(row: Row) -> bool:
    return noise_reason(row) is not None


def when(moment: datetime | None) -> str:
    """A stored time as a page shows it, e.g. '2026-12-05 09:14 UTC' (SQLite keeps no zone: times are stored UTC)."""
    return "—" if moment is None else moment.strftime("%Y-%m-%d %H:%M UTC")


def gpu_change(row: Row) -> str | None:
    """'1980→1755 MHz, 41→47 °C; sw_power_cap': clocks that dropped or a hot GPU explain an odd number."""
    if row.gpu_before is None and row.gpu_after is None:
        return None
    before: dict[str, Any] = row.gpu_before or {}
    after: dict[str, Any] = row.gpu_after or {}

    def change(field: str) -> str:
        return f"{before.get(field, '?')}→{after.get(field, '?')}"

    reasons = sorted({*before.get("clock_event_reasons", []), *after.get("clock_event_reasons", [])})
    text = f"{change('sm_clock_mhz')} MHz, {change('temperature_c')} °C"
    return f"{text}; {', '.join(reasons)}" if reasons else text
