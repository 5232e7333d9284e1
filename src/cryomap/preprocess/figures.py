"""The report's preprocessing figures, as PNG.

* :func:`gallery_figure` — its Figure 2: a gallery of particles after the chain (each panel scaled
  to its own 1–99.5 percentiles), the raw particles above them for comparison.
* :func:`steps_figure` — its Figure 10: one particle through every step of the chain (original,
  CTF-corrected, denoised, blends, ...), one panel per step, in chain order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cryomap.particles.source import ParticleSource
from cryomap.plotting import percentile_limits, pyplot, save_figure

GALLERY_NAME = "preprocess_gallery.png"
STEPS_NAME = "preprocess_steps.png"


def _panel(ax, image: np.ndarray, title: str | None = None) -> None:
    lo, hi = percentile_limits(image)
    ax.imshow(image, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=7)


def gallery_figure(raw: np.ndarray, processed: np.ndarray, path: str | Path, title: str = "") -> Path:
    """Two rows per block of particles: raw (top) and after the chain (bottom); ``raw``/``processed`` (k, h, w)."""
    plt = pyplot()
    k = len(processed)
    cols = min(k, 8)
    blocks = -(-k // cols)
    fig, axes = plt.subplots(2 * blocks, cols, figsize=(1.25 * cols, 2.6 * blocks + 0.4), squeeze=False)
    for i in range(2 * blocks * cols):
        ax = axes[i // cols, i % cols]
        block, row, col = i // (2 * cols), (i // cols) % 2, i % cols
        j = block * cols + col
        if j >= k:
            ax.axis("off")
            continue
        _panel(ax, (raw if row == 0 else processed)[j], ("raw" if row == 0 else "preprocessed") if col == 0 else None)
    fig.suptitle(title or f"{k} particles before and after preprocessing", fontsize=9)
    return save_figure(fig, path)


def steps_figure(steps: dict[str, np.ndarray], path: str | Path, title: str = "") -> Path:
    """One particle through a chain: ``steps`` maps step key → image (h, w), in chain order."""
    plt = pyplot()
    names = list(steps)
    fig, axes = plt.subplots(1, len(names), figsize=(1.6 * len(names), 2.0), squeeze=False)
    for ax, name in zip(axes[0], names):
        _panel(ax, steps[name], "original" if name == "input" else name)
    fig.suptitle(title or "one particle through every step", fontsize=9)
    return save_figure(fig, path)


def chain_figures(source: ParticleSource, steps: list[dict[str, Any]], out_dir: str | Path,
                  n_gallery: int = 16, seed: int = 0) -> list[Path]:
    """Both figures for ``source`` (unprocessed) through ``steps``, written into ``out_dir``."""
    from cryomap.preprocess.chain import apply_chain

    chained = apply_chain(source, steps)
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(source), size=min(n_gallery, len(source)), replace=False))
    out = Path(out_dir)
    inter = chained.read_steps(rows)
    raw, last = inter["input"], inter[list(inter)[-1]]
    gallery = gallery_figure(raw, last, out / GALLERY_NAME,
                             title=f"{len(rows)} particles of {source.path.name if source.path else 'the stack'}: raw and "
                                   f"after {' → '.join(k for k in inter if k != 'input')}")
    one = steps_figure({k: v[0] for k, v in inter.items()}, out / STEPS_NAME,
                       title=f"particle {int(rows[0]) + 1} through every step")
    return [gallery, one]
