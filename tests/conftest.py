"""Fixtures only; shared test data lives in factories.py, tiny_models.py, backends.py and pages.py."""

from __future__ import annotations

from pathlib import Path

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-golden",
        action="store_true",
        help="rewrite tests/golden/ from what the code writes now (test_golden.py); review the diff, then commit",
    )


@pytest.fixture
def tmp_db(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'registry.db'}"


@pytest.fixture
def engine(tmp_db: str):
    from prunereg.registry.db import connect

    engine = connect(tmp_db)
    yield engine
    engine.dispose()
