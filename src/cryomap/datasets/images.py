"""Particle images for conditions: Fourier resize to D×D, then per-image standardisation (whole box)."""

from __future__ import annotations

import numpy as np

from cryomap.core.fourier import resize_images
from cryomap.core.images import standardize_images


def prepare_images(images: np.ndarray, size: int) -> np.ndarray:
    """Resize to ``size``×``size`` (Fourier) then standardise each image; float32 (k, size, size)."""
    return standardize_images(resize_images(images, size))


def read_indexed(images, idx: np.ndarray) -> np.ndarray:
    """``images[idx]`` for a numpy array, memmap or lazy stack, reading rows in ascending order.

    Sorted reads keep memory-mapped access sequential; the result is in the order of ``idx``.
    """
    idx = np.asarray(idx, dtype=np.int64)
    order = np.argsort(idx, kind="stable")
    got = np.asarray(images[idx[order]], dtype=np.float32)
    out = np.empty_like(got)
    out[order] = got
    return out
