"""Divisions, MLPerf's way, and what `prunereg check` asks of a submission beyond `prunereg validate`. No torch.

A reader comparing two methods must know under which rules their numbers came about. **Closed**: the
method is applied by a built-in adapter that prunes inside prunereg (not `checkpoint`, whose weights
were pruned elsewhere), on catalog models, and every quality number that ranks it is one prunereg
measured. **Open**: anything else: a plugin adapter (code the operator installed), a `checkpoint`, a
model outside the catalog, or a method whose quality is only claims (papers' tables, measurements made
elsewhere). The one rule below decides it for a submission file with its saved results (`prunereg
check`) and for a method in the registry with its runs (`registry.queries.methods`), so the check and the
leaderboard never disagree on the same evidence.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import NamedTuple

from .adapters import BUILT_IN, Division
from .catalog import models
from .checks import Problem
from .submission import Reported, Submission

OUTSIDE = "checkpoint"
"""The built-in adapter that loads weights pruned outside prunereg: what it measures is prunereg's, the pruning is not."""

CLOSED_ADAPTERS = frozenset(row.name for row in BUILT_IN) - {OUTSIDE}
"""Adapters whose pruning prunereg itself performs; a plugin can never take one of these names (spec/adapters.py)."""


class Verdict(NamedTuple):
    division: Division
    reason: str


def division(adapters: Iterable[str], measured_on: Iterable[str], measured_quality: bool, claims: int) -> Verdict:
    """The division of a method from its evidence, with the reason in words.

    `adapters`: the adapter of each submission version; `measured_on`: the models prunereg measured it on
    (results files, registry runs); `measured_quality`: prunereg measured its quality on trained weights at
    least once; `claims`: its quality claims (reported or measured elsewhere). Claims next to prunereg's own
    quality do not open a method: they are shown apart and never rank it.
    """
    names = sorted(set(adapters))
    foreign = [name for name in names if name not in CLOSED_ADAPTERS]
    if OUTSIDE in foreign:
        return Verdict("open", "adapter 'checkpoint': the weights were pruned outside prunereg")
    if foreign:
        return Verdict("open", f"adapter {_names(foreign)} is not built in (a plugin package's code)")
    outside = sorted(set(measured_on) - set(models()))
    if outside:
        return Verdict("open", f"measured on {_names(outside)}, not a catalog model")
    if claims and not measured_quality:
        plural = "" if claims == 1 else "s"
        return Verdict("open", f"quality only claimed ({claims} claim{plural}), none measured by prunereg")
    if not measured_quality:
        return Verdict("closed", f"built-in adapter {_names(names)}, no claims: every number is prunereg's to measure")
    apart = f"; its {claims} claim{'' if claims == 1 else 's'} shown apart" if claims else ""
    return Verdict("closed", f"built-in adapter {_names(names)}, quality measured by prunereg on catalog models{apart}")


def _names(names: list[str]) -> str:
    return ", ".join(f"'{name}'" for name in names)


def provenance_complete(sub: Submission) -> Iterator[Problem]:
    """Every claim can be found again and compared: a catalog base model (measured-elsewhere claims too; the
    semantic checks ask it of reported ones), and where a paper is the source, a table and a row that say
    something (the schema asks for the arXiv version and non-empty strings)."""
    catalog = models()
    for i, claim in enumerate(sub.quality_claims):
        where = f"/quality_claims/{i}"
        if not isinstance(claim.provenance, Reported):
            if claim.base_model not in catalog:
                yield Problem(
                    f"{where}/base_model", f"'{claim.base_model}' is not a catalog model (prunereg list models)"
                )
            if not claim.provenance.by.strip():
                yield Problem(f"{where}/provenance/by", "says nobody measured it")
            continue
        for field in ("table", "row"):
            if not getattr(claim.provenance, field).strip():
                yield Problem(f"{where}/provenance/{field}", "is blank: name it as the paper prints it")


SUBMISSION_CHECKS = [provenance_complete]
"""What `prunereg check` runs on a submission after `validate_file` passes."""
