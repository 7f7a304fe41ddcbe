"""Shared fixtures for the reference-op tests: one seeded random generator per test."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def gen() -> torch.Generator:
    """A CPU generator seeded the same way in every test, so failures reproduce."""
    return torch.Generator().manual_seed(1234)
