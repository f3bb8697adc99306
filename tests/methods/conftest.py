"""The method tests run tiny models, for which intra-op threads cost far more than they give (and the CPU is shared)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every method test runs under tests/conftest.py's `one_thread`."""
