"""Matplotlib without a display, and PNGs written atomically: what every stage's figures share."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path, force: bool = True, dpi: int = 90) -> Path:
    """Write ``fig`` as PNG to ``path`` atomically, close it, return the path."""
    from cryomap.io.atomic import atomic_path

    path = Path(path)
    with atomic_path(path, force=force) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")
    pyplot().close(fig)
    return path


def percentile_limits(image: np.ndarray, lo: float = 1.0, hi: float = 99.5) -> tuple[float, float]:
    """Display limits of an image: its ``lo`` and ``hi`` percentiles (a constant image gets ±1 around it)."""
    a, b = np.percentile(np.asarray(image, dtype=np.float64), [lo, hi])
    if not b > a:
        a, b = a - 1.0, a + 1.0
    return float(a), float(b)
