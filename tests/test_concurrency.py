"""Eight processes ingesting overlapping results at once lose no row and duplicate none.

Workers start together (a barrier) on a database none of them has created yet, so the first
migration races too; each ingests three of four methods in two environments, in its own order.
"""

from __future__ import annotations

import multiprocessing
import random
from collections import Counter

import pytest
from backends import BACKENDS, backend_url, counts

WORKERS = 8
SLUGS = [f"method-{i}" for i in range(4)]
ENVIRONMENTS = ["aaaa0001", "bbbb0002"]


def work(url: str, worker: int, barrier, added) -> None:
    from factories import make_environment, make_result, make_submission

    from prunereg.registry.db import connect
    from prunereg.registry.ingest import ingest

    jobs = [(SLUGS[(worker + j) % len(SLUGS)], env) for j in range(3) for env in ENVIRONMENTS]
    random.Random(worker).shuffle(jobs)
    barrier.wait()
    engine = connect(url)
    total: Counter[str] = Counter()
    for slug, env in jobs:
        sub = make_submission(slug)
        total += ingest(engine, sub, make_result(sub, environment=make_environment(git_revision=env))).added
    engine.dispose()
    added.put(dict(total))


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_eight_processes_ingest_overlapping_results(backend, tmp_path):
    ctx = multiprocessing.get_context("spawn")
    barrier, added = ctx.Barrier(WORKERS), ctx.Queue()
    with backend_url(backend, tmp_path) as url:
        workers = [ctx.Process(target=work, args=(url, w, barrier, added)) for w in range(WORKERS)]
        for p in workers:
            p.start()
        reports = [added.get(timeout=120) for _ in workers]
        for p in workers:
            p.join(timeout=30)
        assert [p.exitcode for p in workers] == [0] * WORKERS

        from prunereg.registry.db import connect

        engine = connect(url)
        stored = counts(engine)
        engine.dispose()
    pairs = len(SLUGS) * len(ENVIRONMENTS)  # every (method, environment) is someone's job
    assert stored == {
        "methods": len(SLUGS),
        "submissions": len(SLUGS),
        "operating_points": 2 * len(SLUGS),
        "runs": 2 * pairs,
        "latency_measurements": 4 * pairs,
        "quality_results": len(SLUGS) + 2 * pairs,  # one claim per method, one measured per run
        "failed_measurements": 0,
    }
    assert sum((Counter(r) for r in reports), Counter()) == Counter(stored)  # each row added once
