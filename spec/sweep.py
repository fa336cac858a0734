"""A sweep: submissions x models x scenario suites x execution modes, and what a failed evaluation leaves behind.

`prunereg sweep` reads one small JSON file (or the same fields as options) into `Sweep`, which is
validated like a submission (strict, no unknown field, every string and number bounded), and runs
each of `Sweep.evaluations()` as one Ray task. An evaluation that cannot finish is stored as
`MeasurementFailure` rows, one per operating point and scenario it leaves unmeasured, so the
leaderboard shows a failure where a row is missing. No torch here, like the rest of spec/.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from .catalog import EMBEDDED_MODEL, Frozen, Scenario, suites
from .checks import Problem
from .jsonfile import JsonFileError, read_json
from .results import MAX_REPEATS, NO_CONTROL, Environment, ExecutionMode
from .submission import Name

MAX_BYTES = 100_000
"""A sweep file is a list of names: 100 kB is far more than any needs."""
MAX_EVALUATIONS = 10_000
"""Tasks one sweep may submit: the product of its lists."""

Line = Annotated[str, Field(min_length=1, max_length=300, pattern=NO_CONTROL)]
ResourceLabel = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")]

FailureKind = Literal["out-of-memory", "refused", "error", "worker-lost", "unschedulable"]
FAILURE_KINDS: dict[str, str] = {
    "out-of-memory": "the device or the machine ran out of memory (a model too large for it, say)",
    "refused": "prunereg refused the evaluation with a reason (a checkpoint that cannot be loaded, a misfit point)",
    "error": "any other exception in the evaluation, named by its type",
    "worker-lost": "the Ray worker died (killed, crashed) more times than the sweep retries",
    "unschedulable": "no node of the cluster can give the task the resources it asks for",
}
"""Why an evaluation failed, as the leaderboard words it."""


class SweepSubmission(Frozen):
    """A submission file of the sweep, relative to the sweep file, and optionally only some of its points."""

    path: Line
    points: list[Name] | None = Field(None, min_length=1, max_length=100, description="only these operating points")


class Sweep(Frozen):
    """What to evaluate: every submission on every model, scenario suite and execution mode."""

    schema_version: Literal[1] = 1
    submissions: list[Line | SweepSubmission] = Field(min_length=1, max_length=1000)
    models: list[Line] = Field([EMBEDDED_MODEL], min_length=1, max_length=100)
    suites: list[Name] = Field(["ci"], min_length=1, max_length=20)
    modes: list[ExecutionMode] | None = Field(
        None, min_length=1, max_length=10, description="default: graph on cuda, eager on cpu"
    )
    device: Literal["cpu", "cuda"] = "cpu"
    device_kind: ResourceLabel | None = Field(
        None, description="a Ray custom resource the task needs one unit of (e.g. H200): `ray start --resources`"
    )
    cpus: int = Field(1, strict=True, ge=1, le=1024, description="CPUs each task holds (Ray num_cpus)")
    repeats: int | None = Field(None, strict=True, ge=3, le=MAX_REPEATS, description="default: 15 eager, 50 graph")
    warmup: int = Field(3, strict=True, ge=0, le=100)
    tasks: list[Name] | None = Field(None, max_length=20, description="quality tasks; default the suite's, [] none")
    max_retries: int = Field(3, strict=True, ge=0, le=100, description="Ray retries of a task whose worker died")

    @field_validator("suites")
    @classmethod
    def _known_suites(cls, names: list[str]) -> list[str]:
        unknown = [name for name in names if name not in suites()]
        if unknown:
            raise ValueError(f"unknown scenario suite {', '.join(map(repr, unknown))} (known: {', '.join(suites())})")
        return names

    @model_validator(mode="after")
    def _modes_fit_device(self) -> Sweep:
        if self.device == "cpu" and any(mode != "eager" for mode in self.modes or ()):
            raise ValueError("modes other than eager capture CUDA Graphs and need device cuda")
        if len(self.evaluations()) > MAX_EVALUATIONS:
            raise ValueError(f"{len(self.evaluations())} evaluations: a sweep holds at most {MAX_EVALUATIONS}")
        return self

    def execution_modes(self) -> list[ExecutionMode]:
        return list(self.modes) if self.modes else ["graph" if self.device == "cuda" else "eager"]

    def evaluations(self) -> list[Evaluation]:
        """One per submission, model, suite and mode, in that nesting order."""
        entries = [s if isinstance(s, SweepSubmission) else SweepSubmission(path=s) for s in self.submissions]
        return [
            Evaluation(submission=entry, model=model, suite=suite, mode=mode)
            for entry in entries
            for model in self.models
            for suite in self.suites
            for mode in self.execution_modes()
        ]


class Evaluation(Frozen):
    """One Ray task: one submission on one model, scenario suite and execution mode."""

    submission: SweepSubmission
    model: str
    suite: str
    mode: ExecutionMode

    @property
    def scenarios(self) -> tuple[Scenario, ...]:
        return suites()[self.suite]


def load_sweep(path: Path) -> tuple[Sweep | None, list[Problem]]:
    """The sweep in a file (None if invalid) and every problem, as `FILE: /pointer: message` wants them."""
    try:
        document = read_json(path, MAX_BYTES)
    except JsonFileError as err:
        return None, [Problem("", str(err))]
    return validate_sweep(document)


def validate_sweep(document: object) -> tuple[Sweep | None, list[Problem]]:
    try:
        return Sweep.model_validate(document), []
    except ValidationError as err:
        problems = []
        for e in err.errors():
            loc = [str(part) for part in e["loc"] if not str(part).startswith(("str", "SweepSubmission", "list["))]
            message = e["msg"].removeprefix("Value error, ")
            problems.append(Problem("".join(f"/{part}" for part in loc), message.splitlines()[0]))
        return None, sorted(set(problems))


class MeasurementFailure(Frozen):
    """An operating point and scenario an evaluation could not measure, and why; stored, never a missing row.

    `environment` is the fingerprint of the worker that tried (None where the worker died before it
    said, or the model never loaded on it); `device_name`, `dtype` and `execution_mode` are then what
    was asked for, so the failure still lands in the leaderboard group the measurement would have.
    """

    operating_point: Name
    model: Line
    weights: Literal["trained", "random"] | None = None
    environment: Environment | None = None
    device: Literal["cpu", "cuda"]
    device_name: Line
    dtype: Line
    execution_mode: ExecutionMode
    scenario: Scenario
    stage: Line = Field(description="where it failed: 'loading the model', 'calibrating', a scenario's name, ...")
    kind: FailureKind
    reason: Annotated[str, Field(min_length=1, max_length=1000, pattern=NO_CONTROL)]
    node: Line | None = Field(None, description="the Ray node (host name or address) it ran on")
    attempt: Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")] = Field(
        description="one id per recorded failure, so a retried transaction stores it once"
    )


def one_line(text: str, limit: int = 1000) -> str:
    """An exception's message as stored text: control characters become spaces, at most `limit` characters."""
    flat = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return (flat[: limit - 1] + "…" if len(flat) > limit else flat) or "no message"
