"""The datasets of prunereg's lm-eval tasks, read from the JSONL files shipped beside this module.

lm-eval imports this file by path (the YAML's `custom_dataset: !function ...`), so it imports
nothing from prunereg and nothing that reaches the network.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def read_jsonl(name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (HERE / name).read_text(encoding="utf-8").splitlines()]


def austen_cloze(**_metadata: Any):
    """The austen-cloze examples as a `datasets.DatasetDict` with one split, "test"."""
    import datasets  # type: ignore[import-untyped]

    return datasets.DatasetDict({"test": datasets.Dataset.from_list(read_jsonl("austen_cloze.jsonl"))})
