"""Shared fixtures: the real reference files in ../shared/data (tests skip when it is absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

#: ../shared/data beside the project checkout; override with CRYOMAP_SHARED_DATA.
SHARED_DATA = Path(os.environ.get("CRYOMAP_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path to ../shared/data; skips the test with a clear reason when it is not there."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"reference data not found at {SHARED_DATA} (needs ../shared/data beside the checkout)")
    return SHARED_DATA


@pytest.fixture(autouse=True, scope="session")
def _few_threads():
    """Keep torch to the machine's two cores so parallel test runs do not oversubscribe."""
    try:
        import torch

        torch.set_num_threads(min(2, os.cpu_count() or 1))
    except ImportError:  # pragma: no cover
        pass
    yield
