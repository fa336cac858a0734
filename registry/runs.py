"""Runs as a person manages them: list them with their ids, retire one with a reason.

A retired run stays in the registry with its time and reason (`runs.retired_at`, `runs.retired_why`),
and the method page lists it with both; every ranking, band, export and the resume check
(`queries.stored_points`) leave it out. Nothing is deleted, and a retirement is not undone by
ingesting the run again: the same measurement is the same row.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from prunereg.spec.results import NO_CONTROL

from .db import writer
from .schema import LatencyMeasurement, MethodRecord, OperatingPointRecord, Run, SubmissionRecord

MAX_WHY = 300
"""Characters a reason may have (the column's width)."""


class RetireError(ValueError):
    """A retirement that cannot be done, in one line: no such run, already retired, no reason."""


@dataclass(frozen=True)
class RunSummary:
    id: int
    method_slug: str
    operating_point: str
    spec_hash: str
    model: str
    weights: str
    device_name: str
    execution_mode: str
    environment_key: str
    scenarios: int
    created_at: datetime
    retired_at: datetime | None = None
    retired_why: str | None = None


def run_summaries(engine: Engine, method: str | None = None) -> list[RunSummary]:
    """Every run (retired ones too), oldest first; `method` keeps one method's (by slug)."""
    scenarios = (
        select(LatencyMeasurement.run_id, func.count(LatencyMeasurement.id).label("n"))
        .group_by(LatencyMeasurement.run_id)
        .subquery()
    )
    stmt = (
        select(Run, MethodRecord.slug, OperatingPointRecord.name, SubmissionRecord.spec_hash, scenarios.c.n)
        .join(Run.operating_point)
        .join(OperatingPointRecord.submission)
        .join(SubmissionRecord.method)
        .outerjoin(scenarios, scenarios.c.run_id == Run.id)
        .order_by(Run.created_at, Run.id)
    )
    if method is not None:
        stmt = stmt.where(MethodRecord.slug == method)
    out = []
    with Session(engine) as session:
        for r, slug, point, spec_hash, n in session.execute(stmt):
            out.append(RunSummary(
                r.id, slug, point, spec_hash, r.model, r.weights, r.device_name, r.execution_mode,
                r.environment_key, n or 0, r.created_at, r.retired_at, r.retired_why,
            ))  # fmt: skip
    return out


def retire(engine: Engine, run_id: int, why: str) -> RunSummary:
    """Hide run `run_id` from fronts, bands and exports, keeping it with `why` and the time; the run as retired."""
    why = " ".join(why.split())
    if not why:
        raise RetireError("give the reason with --why: it is kept with the run and shown on the method page")
    if len(why) > MAX_WHY or not re.fullmatch(NO_CONTROL, why):
        raise RetireError(f"the reason must be one line of at most {MAX_WHY} characters")
    with Session(writer(engine)) as session, session.begin():
        run = session.get(Run, run_id, with_for_update=True)
        if run is None:
            raise RetireError(f"no run {run_id} in the registry (`prunereg runs list` shows their ids)")
        if run.retired_at is not None:
            raise RetireError(f"run {run_id} is already retired ({_when(run.retired_at)}: {run.retired_why})")
        run.retired_at, run.retired_why = datetime.now(timezone.utc), why
    return next(r for r in run_summaries(engine) if r.id == run_id)


def _when(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")
