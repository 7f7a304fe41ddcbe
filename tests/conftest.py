"""Shared fixtures for the reference-op tests: one seeded random generator per test."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def gen() -> torch.Generator:
    """A CPU generator seeded the same way in every test, so failures reproduce."""
    return torch.Generator().manual_seed(1234)


# ------------------------------------------------------------------------------------------------ random order
def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--shuffle-seed", default=None, type=int,
                     help="run the tests in a random order drawn from this seed (also FIA_TEST_SHUFFLE=SEED); "
                          "nbval's notebook cells keep their order inside each notebook")


def _shuffle_seed(config: pytest.Config) -> int | None:
    import os

    seed = config.getoption("--shuffle-seed")
    return seed if seed is not None else (int(os.environ["FIA_TEST_SHUFFLE"]) if os.environ.get(
        "FIA_TEST_SHUFFLE") else None)


def pytest_report_header(config: pytest.Config) -> str | None:
    seed = _shuffle_seed(config)
    return None if seed is None else f"fia-kit: tests shuffled with seed {seed} (--shuffle-seed {seed} repeats it)"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """With a shuffle seed: every test file's tests, and the notebooks as wholes, in a seeded random order (a
    notebook's cells depend on the cells before them, so each notebook stays one block, in order)."""
    import random

    seed = _shuffle_seed(config)
    if seed is None:
        return
    blocks: dict[str, list[pytest.Item]] = {}
    for item in items:
        key = str(item.path) if item.path.suffix == ".ipynb" else item.nodeid
        blocks.setdefault(key, []).append(item)
    order = list(blocks.values())
    random.Random(seed).shuffle(order)
    items[:] = [item for block in order for item in block]
