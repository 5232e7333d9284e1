"""Particle images for conditions: Fourier resize to D×D and per-image standardisation."""

from __future__ import annotations

import numpy as np


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """Resize images (k, h, w) to (k, size, size) by cropping/zero-padding their Fourier transform.

    ``torch_fourier_rescale.fourier_rescale_2d`` does the crop/pad (a band-limited resize, no
    aliasing when shrinking: frequencies beyond the new Nyquist are dropped). Non-square images
    are first centre-cropped to their shorter side. Returns float32; a no-op when already
    ``size``×``size``.

    Centre: pixel ``n//2`` of the input lands on pixel ``size//2`` of the output (RELION's centre,
    even and odd sizes). The library centres an odd axis on ``(n+1)//2`` instead, so odd input and
    output sizes are shifted by one pixel around it; the images are periodic to the DFT, so the
    (circular) shift is exact.
    """
    arr = np.asarray(images, dtype=np.float32)
    if arr.ndim == 2:
        arr = arr[None]
    k, h, w = arr.shape
    if h != w:
        s = min(h, w)
        arr = arr[:, (h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s]
        h = w = s
    if h == size:
        return np.ascontiguousarray(arr)
    import torch
    from torch_fourier_rescale import fourier_rescale_2d

    if h % 2:
        arr = np.roll(arr, 1, axis=(-2, -1))  # pixel h//2 → (h+1)//2, the library's centre
    out, _ = fourier_rescale_2d(torch.from_numpy(np.ascontiguousarray(arr)), target_shape=(size, size))
    res = out.numpy().astype(np.float32, copy=False)
    if size % 2:
        res = np.ascontiguousarray(np.roll(res, -1, axis=(-2, -1)))  # (size+1)//2 → size//2
    return res


def standardize_images(images: np.ndarray) -> np.ndarray:
    """Per-image standardisation: each image minus its mean, divided by its standard deviation.

    A constant image becomes all zeros. Returns float32 (k, h, w).
    """
    arr = np.asarray(images, dtype=np.float32)
    # float64 accumulation for the statistics, float32 arithmetic for the (large) arrays
    centred = arr - arr.mean(axis=(-2, -1), keepdims=True, dtype=np.float64).astype(np.float32)
    std = np.sqrt(np.einsum("...ij,...ij->...", centred, centred, dtype=np.float64) / (arr.shape[-1] * arr.shape[-2]))
    std[std == 0] = 1.0
    centred /= std.astype(np.float32)[..., None, None]
    return centred


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
