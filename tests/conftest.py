"""Fixtures only; shared test data lives in factories.py, tiny_models.py, backends.py, pages.py and browsers.py."""

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


@pytest.fixture(scope="session")
def embedded_held_out():
    """prunereg-mini on CPU in float32, its default calibration ids and its held-out ids and BOS: what the
    selection tests score the papers' claims on (they prune copies, never the model itself)."""
    import torch

    from prunereg.harness.calibration import calibration_ids
    from prunereg.harness.embedded import EVAL_SPLIT
    from prunereg.harness.models import load_model
    from prunereg.harness.quality import encode
    from prunereg.spec.calibration import Calibration

    loaded = load_model("prunereg-mini", "cpu", torch.float32)
    config, tokenizer = loaded.model.config, loaded.tokenizer
    assert tokenizer is not None
    ids = calibration_ids(Calibration(), tokenizer, config.vocab_size, config.max_position_embeddings)
    return loaded.model, ids, encode(tokenizer, EVAL_SPLIT), tokenizer.bos_token_id


@pytest.fixture(scope="module")
def browser():
    """One headless chromium per test module (browsers.py: which one, with which flags)."""
    from browsers import ARGS, CHROMIUM, sync_api

    with sync_api.sync_playwright() as playwright:
        try:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        except Exception as error:  # a chromium that cannot start here is an environment problem
            pytest.skip(f"chromium did not start: {error}")
        yield browser
        browser.close()


@pytest.fixture
def watched(browser):
    """A fresh page of `browser` that records requests, errors and dialogs (browsers.Watched)."""
    from browsers import Watched

    w = Watched(browser)
    yield w
    w.context.close()
