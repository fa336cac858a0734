"""The operating points that carry a reported claim on a model of the given model's shapes, per submission.

python benchmarks/claimed_points.py llama-2-7b  ->  one line per submission: SLUG POINT [POINT ...]
(what benchmarks/h200_headline.sh measures: every claimed point once, on one model of each shape class).
"""

from __future__ import annotations

import sys
from pathlib import Path

from prunereg.spec.catalog import models
from prunereg.spec.validate import validate_file


def claimed_points(model: str, folder: Path = Path("submissions")) -> dict[str, list[str]]:
    shapes = models()[model].shapes()
    catalog = models()
    points: dict[str, list[str]] = {}
    for path in sorted(folder.glob("*.json")):
        submission, problems = validate_file(path)
        if submission is None or problems:
            raise SystemExit(f"{path}: does not validate")
        names = {
            c.operating_point
            for c in submission.quality_claims
            if c.base_model in catalog and catalog[c.base_model].shapes() == shapes
        }
        ordered = [p.name for p in submission.adapter.operating_points if p.name in names]
        if ordered:
            points[submission.method.slug] = ordered
    return points


if __name__ == "__main__":
    for slug, names in claimed_points(sys.argv[1]).items():
        print(slug, *names)
