"""`prunereg sweep`: submissions x models x scenario suites x execution modes, one Ray task per evaluation.

Ray schedules; prunereg writes no scheduler. Each evaluation (one submission on one model, suite,
mode and device) is a Ray task asking for what it needs (a CPU or `num_gpus=1`, and one unit of a
custom resource such as `H200` where the sweep names a device kind), on the cluster at `--address`
or on a local one. Every task writes to the one shared registry itself, through the same per-point
transactions and resume as `prunereg evaluate`: a point is stored as soon as it is measured, and one
already stored is skipped. So a task whose worker dies is retried by Ray (`max_retries`) and the retry
measures only the points that are missing; nothing is stored twice. What an evaluation cannot measure
(out of memory, a checkpoint that cannot be loaded, any exception) is stored as a failed measurement,
per operating point and scenario, and the leaderboard shows it where the row would be.

Ray is imported inside the command (an optional dependency, `pip install prunereg[ray]`), so the
rest of the CLI stays fast and runs without it.
"""

from __future__ import annotations

import gc
import ipaddress
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, cast

import typer
from rich.table import Table
from rich.text import Text

from prunereg.spec.catalog import suites
from prunereg.spec.results import Environment, ExecutionMode
from prunereg.spec.submission import Submission
from prunereg.spec.sweep import (
    Evaluation,
    FailureKind,
    MeasurementFailure,
    Sweep,
    SweepSubmission,
    load_sweep,
    one_line,
)

from .common import DbOption, console, errors, fail, load_all, load_valid
from .measure import DEFAULT_REPEATS, Device, ExecutionChoice

POLL_SECONDS = 0.25
"""How often the driver looks at finished tasks and the workers' progress events."""


@dataclass(frozen=True)
class Job:
    """What one Ray task needs, as plain data: the submission travels as JSON, so workers need no copy of the file."""

    index: int
    submission_json: str
    folder: str
    """The submission file's folder, which a `checkpoint` point's path is relative to (on the worker's machine)."""
    points: tuple[str, ...]
    model: str
    suite: str
    mode: ExecutionMode
    device: str
    repeats: int
    warmup: int
    tasks: tuple[str, ...] | None
    cpus: int
    url: str


@dataclass(frozen=True)
class Event:
    """A worker's word to the driver: it started (where, with which environment), or a point is done."""

    index: int
    kind: Literal["start", "measured", "reused", "failed"]
    point: str | None = None
    node: str | None = None
    pid: int | None = None
    environment: str | None = None
    """spec.results.Environment as JSON (start only; None when it could not be taken)."""


@dataclass
class Outcome:
    """What one evaluation did, for the final table; `failures` are also in the registry."""

    index: int
    node: str = ""
    device_name: str = ""
    measured: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    failures: list[MeasurementFailure] = field(default_factory=list)
    seconds: float = 0.0


def node_name() -> str:
    return socket.gethostname()


def stored_model_name(model: str) -> str:
    """The name runs of `model` are stored under (harness.models.load_model): a catalog name, or a checkpoint's folder name."""
    from prunereg.spec.catalog import models

    return model if model in models() else Path(model).name or model


def classify(err: BaseException) -> tuple[FailureKind, str]:
    """The failure kind and a one-line reason; an out-of-memory error is told apart however torch raised it."""
    from prunereg.evaluate import EvaluationError

    text = str(err)
    if isinstance(err, MemoryError) or type(err).__name__ == "OutOfMemoryError" or "out of memory" in text.lower():
        return "out-of-memory", one_line(f"{type(err).__name__}: {text}")
    if isinstance(err, EvaluationError):
        return "refused", one_line(text)
    return "error", one_line(f"{type(err).__name__}: {text}")


def run_evaluation(job: Job, events: Any) -> Outcome:
    """One evaluation, on a Ray worker: every point not stored yet, each stored as it finishes; failures stored too.

    A point that fails is recorded with the stage it reached and the evaluation goes on with the next
    points (loading the model again); a failure before any point (the model, the device, the dense
    quality) is recorded for every point still missing.
    """
    started = time.monotonic()
    import torch

    from prunereg.evaluate import evaluate
    from prunereg.harness.fingerprint import environment
    from prunereg.registry.db import connect
    from prunereg.registry.ingest import ingest, ingest_failures
    from prunereg.registry.queries import stored_points

    spec = Submission.model_validate_json(job.submission_json)
    scenarios = suites()[job.suite]
    names = [s.name for s in scenarios]
    outcome = Outcome(job.index, node=node_name())
    if job.device == "cpu":
        torch.set_num_threads(job.cpus)  # the environment key holds the thread count: the same on every worker
    device = torch.device(job.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    env: Environment | None = None
    try:
        env = environment(device, dtype, job.mode)
    except Exception:  # no such device here: evaluate() says so below, and it is stored as the failure
        pass
    outcome.device_name = env.device_name if env else job.device
    events.put(
        Event(
            job.index, "start", node=outcome.node, pid=os.getpid(), environment=env.model_dump_json() if env else None
        )
    )
    engine = connect(job.url)
    loaded: list[tuple[str, str]] = []
    state: dict[str, Any] = {}

    def stored(model_name: str, weights: str, run_env: Environment) -> set[str]:
        loaded.append((model_name, weights))
        state.update(in_loop=True, point=None)
        return stored_points(engine, spec.spec_hash(), model_name, weights, run_env.key(), names)

    def store(partial) -> None:
        ingest(engine, spec, partial)
        for point in partial.points:
            outcome.measured.append(point.operating_point)
            events.put(Event(job.index, "measured", point.operating_point))
        state["point"] = None

    def on_step(label: str) -> None:
        point, _, stage = label.partition(" · ")
        if stage == "already in the registry":
            outcome.reused.append(point)
            events.put(Event(job.index, "reused", point))
            state["point"] = None
        else:
            state.update(point=point, stage=stage)

    def failed(points: list[str], stage: str, err: Exception) -> None:
        kind, reason = classify(err)
        attempt = uuid.uuid4().hex
        records = [
            MeasurementFailure(
                operating_point=point,
                model=loaded[-1][0] if loaded else stored_model_name(job.model),
                weights=loaded[-1][1] if loaded else None,
                environment=env,
                device=device.type,
                device_name=outcome.device_name,
                dtype=env.dtype if env else str(dtype).removeprefix("torch."),
                execution_mode=job.mode,
                scenario=scenario,
                stage=one_line(stage, 300),
                kind=kind,
                reason=reason,
                node=outcome.node,
                attempt=attempt,
            )
            for point in points
            for scenario in scenarios
        ]
        ingest_failures(engine, spec, records)
        outcome.failures.extend(records)
        for point in points:
            events.put(Event(job.index, "failed", point))

    remaining = list(job.points)
    try:
        while remaining:
            state.update(in_loop=False, point=None, stage="loading the model")
            try:
                evaluate(
                    spec, job.model, job.device, scenarios, job.warmup, job.repeats, job.mode, set(remaining),
                    on_step, stored, store, folder=Path(job.folder), tasks=job.tasks,
                )  # fmt: skip
                break
            except Exception as err:
                done = {*outcome.measured, *outcome.reused}
                pending = [p for p in remaining if p not in done]
                if not state["in_loop"]:  # before the first point: nothing of these can be measured here
                    failed(pending, state["stage"], err)
                    break
                if not pending:  # every point is stored: nothing is missing
                    break
                point = state["point"] or pending[0]  # no step named yet: it failed pruning the next point
                failed([point], state["stage"] if state["point"] else "applying the adapter", err)
                remaining = [p for p in pending if p != point]
            finally:
                if device.type == "cuda" and torch.cuda.is_available():  # before loading the model again
                    gc.collect()
                    torch.cuda.empty_cache()
    finally:
        engine.dispose()
    outcome.seconds = time.monotonic() - started
    return outcome


def stored_by(task: Tracked, spec: Submission, url: str) -> set[str]:
    """Points of a task Ray gave up on that are stored all the same: its worker died after storing one, before
    saying so. Only known where a worker said which environment it measured in."""
    from prunereg.registry.db import connect
    from prunereg.registry.queries import stored_points

    if task.environment is None:
        return set()
    names = [s.name for s in suites()[task.job.suite]]
    model, key = stored_model_name(task.job.model), task.environment.key()
    engine = None
    try:
        engine = connect(url)
        return {p for w in ("trained", "random") for p in stored_points(engine, spec.spec_hash(), model, w, key, names)}
    except Exception:  # the registry is unreachable: the failures will not be stored either, and say so
        return set()
    finally:
        if engine is not None:
            engine.dispose()


def lost(
    job: Job, spec: Submission, done: set[str], env: Environment | None, node: str | None, err: BaseException
) -> list[MeasurementFailure]:
    """The failures the driver records for a task Ray gave up on (its worker died more often than it retries)."""
    import ray.exceptions

    kind: FailureKind = "worker-lost"
    if isinstance(err, ray.exceptions.OutOfMemoryError):
        kind = "out-of-memory"
    elif type(err).__name__ == "TaskUnschedulableError":
        kind = "unschedulable"
    elif not isinstance(err, (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError)):
        kind = "error"
    cause = getattr(err, "cause", None) or err  # a task that raised: its own exception, not Ray's traceback
    attempt = uuid.uuid4().hex
    return [
        MeasurementFailure(
            operating_point=point,
            model=stored_model_name(job.model),
            environment=env,
            device=cast(Any, job.device),
            device_name=env.device_name if env else job.device,
            dtype=env.dtype if env else ("bfloat16" if job.device == "cuda" else "float32"),
            execution_mode=job.mode,
            scenario=scenario,
            stage="running the task",
            kind=kind,
            reason=one_line(f"{type(cause).__name__}: {cause}"),
            node=node,
            attempt=attempt,
        )
        for point in job.points
        if point not in done
        for scenario in suites()[job.suite]
    ]


@dataclass
class Tracked:
    """The driver's view of one task, from its workers' events: where it ran and which points are done."""

    job: Job
    evaluation: Evaluation
    slug: str
    started: float | None = None
    nodes: list[str] = field(default_factory=list)
    environment: Environment | None = None
    measured: set[str] = field(default_factory=set)
    reused: set[str] = field(default_factory=set)
    failed: set[str] = field(default_factory=set)
    outcome: Outcome | None = None
    seconds: float = 0.0

    @property
    def done(self) -> int:
        return len(self.measured | self.reused | self.failed)

    def seen(self, event: Event) -> None:
        if event.kind == "start":
            self.started = self.started or time.monotonic()
            self.nodes.append(event.node or "?")
            self.environment = Environment.model_validate_json(event.environment) if event.environment else None
        elif event.point is not None:
            {"measured": self.measured, "reused": self.reused, "failed": self.failed}[event.kind].add(event.point)


def jobs_of(
    sweep: Sweep, submissions: dict[str, tuple[Submission, Path]], url: str
) -> list[tuple[Job, Evaluation, Submission]]:
    """One job per evaluation; `submissions` maps each sweep entry's path to its loaded submission and folder."""
    out = []
    for index, evaluation in enumerate(sweep.evaluations()):
        spec, folder = submissions[evaluation.submission.path]
        points = evaluation.submission.points or [p.name for p in spec.adapter.operating_points]
        job = Job(
            index=index, submission_json=spec.model_dump_json(), folder=str(folder), points=tuple(points),
            model=evaluation.model, suite=evaluation.suite, mode=evaluation.mode, device=sweep.device,
            repeats=sweep.repeats or DEFAULT_REPEATS.get(evaluation.mode, 50), warmup=sweep.warmup,
            tasks=None if sweep.tasks is None else tuple(sweep.tasks), cpus=sweep.cpus, url=url,
        )  # fmt: skip
        out.append((job, evaluation, spec))
    return out


def run_sweep(
    sweep: Sweep,
    submissions: dict[str, tuple[Submission, Path]],
    url: str,
    on_event: Callable[[Tracked, Event], None] = lambda tracked, event: None,
) -> list[Tracked]:
    """Submit every evaluation to the Ray cluster this process is connected to, and wait for all of them.

    Each task asks for `sweep.cpus` CPUs, one GPU on cuda and one unit of `sweep.device_kind` where
    named; Ray retries a task whose worker died up to `sweep.max_retries` times (not one that raised:
    the task catches and stores its own failures). A task Ray gives up on is stored as failed by the
    driver, for its points no event reported done.
    """
    import ray
    from ray.util.queue import Empty, Queue

    from prunereg.registry.db import connect
    from prunereg.registry.ingest import ingest_failures

    events = Queue(actor_options={"num_cpus": 0})
    remote = ray.remote(run_evaluation)
    options: dict[str, Any] = {"num_cpus": sweep.cpus, "max_retries": sweep.max_retries, "retry_exceptions": False}
    if sweep.device == "cuda":
        options["num_gpus"] = 1
    if sweep.device_kind:
        options["resources"] = {sweep.device_kind: 1}
    tracked: dict[Any, Tracked] = {}
    by_index: dict[int, Tracked] = {}
    for job, evaluation, spec in jobs_of(sweep, submissions, url):
        name = f"prunereg {spec.method.slug} {evaluation.model} {evaluation.suite} {evaluation.mode}"
        ref = remote.options(name=name[:200], **options).remote(job, events)
        tracked[ref] = by_index[job.index] = Tracked(job, evaluation, spec.method.slug)

    def drain() -> None:
        while True:
            try:
                event = events.get_nowait()
            except Empty:
                return
            by_index[event.index].seen(event)
            on_event(by_index[event.index], event)

    pending = list(tracked)
    try:
        while pending:
            ready, pending = ray.wait(pending, num_returns=len(pending), timeout=POLL_SECONDS, fetch_local=False)
            drain()
            for ref in ready:
                task = tracked[ref]
                try:
                    task.outcome = ray.get(ref)
                except ray.exceptions.RayError as err:
                    spec = Submission.model_validate_json(task.job.submission_json)
                    done = task.measured | task.reused | task.failed | stored_by(task, spec, url)
                    node = task.nodes[-1] if task.nodes else None
                    records = lost(task.job, spec, done, task.environment, node, err)
                    try:
                        if records:
                            engine = connect(url)
                            try:
                                ingest_failures(engine, spec, records)
                            finally:
                                engine.dispose()
                    except Exception as store_err:  # the table still says what failed, and that it is not stored
                        note = one_line(f"{records[0].reason} (not stored: {type(store_err).__name__}: {store_err})")
                        records = [r.model_copy(update={"reason": note}) for r in records]
                    task.outcome = Outcome(
                        task.job.index, node or "", records[0].device_name if records else "", failures=records
                    )
                    task.failed |= {r.operating_point for r in records}
                elapsed = time.monotonic() - (task.started or time.monotonic())  # events may come late
                task.seconds = max(elapsed, task.outcome.seconds)
                on_event(task, Event(task.job.index, "failed" if task.outcome.failures else "measured"))
        drain()
    finally:
        events.shutdown(force=True)
    return list(by_index.values())


def outcome_table(tasks: list[Tracked]) -> Table:
    """What ran where: one row per evaluation."""
    table = Table(title="Sweep: what ran where")
    for column in ("submission", "model", "suite", "mode", "node", "device"):
        table.add_column(column, no_wrap=column != "device")
    for column in ("measured", "reused", "seconds"):
        table.add_column(column, justify="right")
    table.add_column("failure")
    for task in tasks:
        outcome = task.outcome or Outcome(task.job.index)
        failures = outcome.failures
        failure = ""
        if failures:
            points = sorted({f.operating_point for f in failures}, key=task.job.points.index)
            failure = f"{', '.join(points)}: {failures[0].kind} at {failures[0].stage}: {failures[0].reason}"
        reused = task.reused - task.measured  # measured by an attempt whose worker died, then found by the retry
        table.add_row(
            Text(task.slug), Text(task.job.model), task.job.suite, task.job.mode,
            Text(" → ".join(task.nodes) or outcome.node or "—"), Text(outcome.device_name or "—"),
            str(len(task.measured)), str(len(reused)), f"{task.seconds:.1f}", Text(failure),
        )  # fmt: skip
    return table


def local_host(address: str | None) -> bool:
    """Whether a Ray address is on this machine: none (a local cluster), 'local', 'auto', or a loopback or own name."""
    if address in (None, "local", "auto"):
        return True
    host = address.removeprefix("ray://").rsplit(":", 1)[0].strip("[]")
    own = {"localhost", socket.gethostname(), socket.getfqdn()}
    try:
        return (
            host in own or ipaddress.ip_address(host).is_loopback or host == socket.gethostbyname(socket.gethostname())
        )
    except (ValueError, OSError):
        return False


def registry_url(db: str | None) -> str:
    """The registry URL every worker opens: a SQLite path made absolute, since workers start in other folders."""
    from sqlalchemy import make_url

    from prunereg.registry.db import resolve_url

    url = resolve_url(db)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        return parsed.set(database=str(Path(parsed.database).expanduser().absolute())).render_as_string(False)
    return url


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def sweep_from(file: Path | None, overrides: dict[str, Any]) -> tuple[Sweep, dict[str, tuple[Submission, Path]]]:
    """The sweep of `file` with the options given on the command line replacing its fields, and its submissions.

    Submission paths in a file are relative to the file's folder; on the command line, to the current one.
    """
    document: dict[str, Any] = {}
    base = Path.cwd()
    if file is not None:
        (loaded,) = load_all([file], load_sweep)
        document = loaded.model_dump(exclude_defaults=True)
        base = file.absolute().parent
    if "submissions" in overrides:
        base = Path.cwd()
    document.update(overrides)
    if not document.get("submissions"):
        raise fail("name a sweep file or at least one --submission")
    from pydantic import ValidationError

    try:
        sweep = Sweep.model_validate(document)
    except ValidationError as err:
        first = err.errors()[0]
        where = "/".join(map(str, first["loc"])) or "sweep"
        raise fail(f"{where}: {first['msg'].removeprefix('Value error, ')}") from None
    entries = [s if isinstance(s, SweepSubmission) else SweepSubmission(path=s) for s in sweep.submissions]
    paths = list(dict.fromkeys(entry.path for entry in entries))
    specs = load_valid([base / path for path in paths])
    submissions = {path: (spec, (base / path).absolute().parent) for path, spec in zip(paths, specs)}
    for entry in entries:
        spec, _ = submissions[entry.path]
        unknown = sorted(set(entry.points or ()) - {p.name for p in spec.adapter.operating_points})
        if unknown:
            raise fail(f"{entry.path}: no operating point named {', '.join(map(repr, unknown))}")
    return sweep, submissions


def sweep(
    file: Annotated[
        Path | None, typer.Argument(help="sweep JSON file (spec/sweep.py); options replace its fields")
    ] = None,
    submission: Annotated[
        list[Path] | None, typer.Option("--submission", help="submission JSON file (repeatable)")
    ] = None,
    model: Annotated[
        list[str] | None, typer.Option("--model", help="catalog model or checkpoint folder (repeatable)")
    ] = None,
    scenarios: Annotated[
        list[str] | None, typer.Option("--scenarios", help="scenario suite (repeatable): " + ", ".join(suites()))
    ] = None,
    mode: Annotated[
        list[ExecutionChoice] | None,
        typer.Option("--mode", help="execution mode (repeatable) [default: graph on cuda, eager on cpu]"),
    ] = None,
    device: Annotated[Device | None, typer.Option(help="where each task measures [default: cpu]")] = None,
    device_kind: Annotated[
        str | None, typer.Option(help="Ray custom resource each task needs one of, e.g. H200 (ray start --resources)")
    ] = None,
    point: Annotated[
        list[str] | None, typer.Option("--point", help="measure only this operating point of every submission")
    ] = None,
    repeats: Annotated[int | None, typer.Option(min=3, max=1000, help="timed repeats per scenario")] = None,
    warmup: Annotated[int | None, typer.Option(min=0, max=100, help="untimed repeats first [default: 3]")] = None,
    quality_tasks: Annotated[
        list[str] | None, typer.Option("--task", help="quality task instead of the suite's (repeatable)")
    ] = None,
    no_quality: Annotated[bool, typer.Option("--no-quality", help="measure latency only")] = False,
    cpus: Annotated[int | None, typer.Option(min=1, max=1024, help="CPUs per task [default: 1]")] = None,
    max_retries: Annotated[
        int | None, typer.Option(min=0, max=100, help="Ray retries of a task whose worker died [default: 3]")
    ] = None,
    address: Annotated[
        str | None,
        typer.Option(
            help="Ray cluster to run on (ray.init address: HOST:PORT, auto, ray://...) [default: a local one]"
        ),
    ] = None,
    db: DbOption = None,
) -> None:
    """Evaluate submissions x models x scenario suites x execution modes as Ray tasks into one shared registry.

    Each point is stored as it finishes and skipped once stored, so a rerun or a retried task measures only what is missing; what fails is stored as a failed measurement.

    Example: prunereg sweep sweep.json --address auto --db postgresql+psycopg://user@host/prunereg
    """
    overrides: dict[str, Any] = {}
    if submission:
        overrides["submissions"] = [{"path": str(path), "points": point} if point else str(path) for path in submission]
    for key, value in (
        ("models", model), ("suites", scenarios), ("modes", [m.value for m in mode or ()] or None),
        ("device", device.value if device else None), ("device_kind", device_kind), ("repeats", repeats),
        ("warmup", warmup), ("tasks", [] if no_quality else quality_tasks), ("cpus", cpus),
        ("max_retries", max_retries),
    ):  # fmt: skip
        if value is not None:
            overrides[key] = value
    if point and not submission:
        raise fail("--point needs --submission (a sweep file names points per submission)")
    plan, submissions = sweep_from(file, overrides)
    from prunereg.spec.tasks import task as quality_task

    try:
        for name in plan.tasks or ():
            quality_task(name)
    except ValueError as err:
        raise fail(str(err)) from None
    url = registry_url(db)
    if is_sqlite(url) and not local_host(address):
        raise fail(
            f"the registry is SQLite, one file on this machine, and --address {address} names another: "
            "give a shared PostgreSQL registry with --db"
        )
    from .common import connect

    connect(url).dispose()  # create or migrate the registry once, before any worker opens it
    try:
        import ray
    except ImportError:
        raise fail("prunereg sweep needs Ray: pip install 'prunereg[ray]' (or 'ray>=2.40')") from None
    started_here = not ray.is_initialized()
    if started_here:
        start_ray(address, plan)
    try:
        check_cluster(plan, url)
        tasks = run_with_progress(plan, submissions, url)
    finally:
        if started_here:
            ray.shutdown()
    console.print(outcome_table(tasks))
    failed = [t for t in tasks if t.outcome is None or t.outcome.failures]
    if failed:
        errors.print(
            Text(f"{len(failed)} of {len(tasks)} evaluations failed in part or whole; stored as failed measurements"),
            soft_wrap=True,
        )
        raise typer.Exit(1)


def start_ray(address: str | None, plan: Sweep) -> None:
    """Join the cluster at `address`, or start a local one, with the device kind as a resource where asked."""
    import ray

    options: dict[str, Any] = {"log_to_driver": False, "configure_logging": False}
    try:
        if address is not None and address != "local":
            ray.init(address=address, **options)
            return
        resources = {plan.device_kind: float(max(1, _local_gpus()))} if plan.device_kind else None
        ray.init(include_dashboard=False, resources=resources, **options)
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise fail(f"cannot reach the Ray cluster {address}: {one_line(str(err), 300)}") from None


def _local_gpus() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except ImportError:
        return 0


def check_cluster(plan: Sweep, url: str) -> None:
    """Refuse what would hang or write one SQLite file from several machines, before any task is submitted."""
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if is_sqlite(url) and len(nodes) > 1:
        raise fail(
            f"the registry is SQLite, one file on one machine, and the Ray cluster has {len(nodes)} nodes: "
            "give a shared PostgreSQL registry with --db"
        )
    resources = ray.cluster_resources()
    needed = {"CPU": plan.cpus, **({"GPU": 1} if plan.device == "cuda" else {})}
    if plan.device_kind:
        needed[plan.device_kind] = 1
    missing = [name for name, amount in needed.items() if resources.get(name, 0) < amount]
    if missing:
        have = ", ".join(f"{k} {v:g}" for k, v in sorted(resources.items()) if not k.startswith(("node:", "memory")))
        raise fail(f"no node of the Ray cluster has {', '.join(missing)} for a task (the cluster has: {have})")


def run_with_progress(plan: Sweep, submissions: dict[str, tuple[Submission, Path]], url: str) -> list[Tracked]:
    """run_sweep with one rich progress bar: operating points done (measured, found stored or failed) of all."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    jobs = jobs_of(plan, submissions, url)
    total = sum(len(job.points) for job, _, _ in jobs)
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=errors, transient=True,
    ) as progress:  # fmt: skip
        bar = progress.add_task(f"sweep: {len(jobs)} evaluations", total=total)
        seen: dict[int, Tracked] = {}

        def on_event(task: Tracked, event: Event) -> None:
            seen[task.job.index] = task
            done = sum(t.done for t in seen.values())
            what = f"{task.slug} · {event.point}" if event.point else task.slug
            progress.update(bar, completed=done, description=f"sweep: {what} {event.kind}")

        return run_sweep(plan, submissions, url, on_event)
