"""Per-image normalisation every stage shares: statistics over the whole box or the background ring.

RELION normalises extracted particles to mean 0 and standard deviation 1 over the pixels outside a
circle (the background ring, ``bg_radius`` px from the box centre ``box // 2``); the method report
standardises over the whole box. Both are :func:`standardize_images`.
"""

from __future__ import annotations

import numpy as np


def background_mask(box: int, bg_radius: float) -> np.ndarray:
    """Boolean (box, box) mask of pixels farther than ``bg_radius`` px from the box centre (box//2, box//2)."""
    c = box // 2
    yy, xx = np.mgrid[:box, :box]
    return (xx - c) ** 2 + (yy - c) ** 2 > float(bg_radius) ** 2


def standardize_images(
    images: np.ndarray,
    bg_radius: float | None = None,
    *,
    invert: bool = False,
    inplace: bool = False,
) -> np.ndarray:
    """Per image: subtract the mean and divide by the standard deviation; float32 (k, h, w).

    ``bg_radius`` None: statistics over the whole box (the method report's standardisation).
    ``bg_radius`` r (px): over the pixels farther than r from the centre (RELION's background
    normalisation). ``invert`` then flips the contrast (×−1). An image whose statistics region is
    constant is only shifted (divided by 1), never blown up. With ``inplace`` a float32 input is
    overwritten instead of copied. Statistics accumulate in float64 (no batch-sized float64
    temporary is made).
    """
    arr = np.asarray(images)
    if arr.ndim == 2:
        arr = arr[None]
    out = arr if inplace and arr.dtype == np.float32 and arr.flags.writeable else np.array(arr, dtype=np.float32, copy=True)
    if len(out) == 0:
        return out
    mask = None
    if bg_radius is not None:
        mask = background_mask(out.shape[-1], bg_radius) if out.shape[-1] == out.shape[-2] else None
        if mask is None or not mask.any():
            raise ValueError(f"background radius {bg_radius} px leaves no background in a {out.shape[-1]} px box")
    sign = -1.0 if invert else 1.0
    n = len(out)
    region = out.reshape(n, -1) if mask is None else out[:, mask]  # a view, or an (n, m) copy of the ring
    m = region.shape[1]
    mean = region.mean(axis=1, dtype=np.float64)
    # E[x²] − mean² accumulated in float64 without a batch-sized float64 temporary
    var = np.maximum(np.einsum("ij,ij->i", region, region, dtype=np.float64) / m - mean * mean, 0.0)
    std = np.sqrt(var)
    out -= mean.astype(np.float32)[:, None, None]
    out *= (sign / np.where(std > 0, std, 1.0)).astype(np.float32)[:, None, None]
    return out
