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


def chromium() -> str | None:
    """The headless browser on PATH (Debian's ``chromium``; .ci/run installs it), or None."""
    import shutil

    return next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None)


def run_chromium(page: Path, action: str, profile: Path, window: str, *extra: str, timeout: float = 180):
    """Run headless Chromium once on ``page`` (``action``: ``--dump-dom`` or ``--screenshot=PNG``); the
    finished process. No network, no first-run work, a throw-away profile."""
    import subprocess

    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", f"--window-size={window}", *extra]
    return subprocess.run([chromium(), *flags, action, page.resolve().as_uri()], capture_output=True, text=True,
                          timeout=timeout)
