"""Small map operations the reconstruction loops share: low-pass, soft spherical mask, FSC weighting, Fourier resizing."""

from __future__ import annotations

import numpy as np
import torch


def radial_frequency(box: int) -> np.ndarray:
    """|k| in Fourier pixels of every voxel of a ``box``³ ``rfftn`` (z, y, x//2+1)."""
    f = np.fft.fftfreq(box) * box
    fx = np.fft.rfftfreq(box) * box
    return np.sqrt(f[:, None, None] ** 2 + f[None, :, None] ** 2 + fx[None, None, :] ** 2)


def lowpass(volume: np.ndarray, r_px: float, width_px: float = 2.0) -> np.ndarray:
    """Low-pass a cubic map to Fourier radius ``r_px`` (pixels of its box) with a raised-cosine edge ``width_px`` wide."""
    box = volume.shape[0]
    r = radial_frequency(box)
    f = np.clip((r_px + width_px / 2 - r) / max(width_px, 1e-6), 0.0, 1.0)
    f = 0.5 - 0.5 * np.cos(np.pi * f)
    return np.fft.irfftn(np.fft.rfftn(volume) * f, s=volume.shape, axes=(0, 1, 2)).astype(np.float32)


def filter_by_shell(volume: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Multiply each Fourier shell k (rounded |k|, 0 … box//2) of ``volume`` by ``weights[k]`` (0 beyond)."""
    box = volume.shape[0]
    k = np.rint(radial_frequency(box)).astype(np.int64)
    w = np.zeros(k.max() + 1)
    w[: min(len(weights), len(w))] = weights[: len(w)]
    return np.fft.irfftn(np.fft.rfftn(volume) * w[k], s=volume.shape, axes=(0, 1, 2)).astype(np.float32)


def fsc_weights(fsc: np.ndarray) -> np.ndarray:
    """Rosenthal & Henderson's map weighting ``√(2·FSC / (1 + FSC))`` per shell (0 where FSC ≤ 0)."""
    f = np.clip(np.asarray(fsc, np.float64), 0.0, 1.0)
    return np.sqrt(2.0 * f / (1.0 + f))


def sphere_mask(box: int, radius_px: float, edge_px: float = 3.0) -> np.ndarray:
    """Soft sphere (z, y, x) about voxel box//2: 1 inside ``radius_px``, raised cosine to 0 at ``radius_px + edge_px``."""
    ax = np.arange(box) - box // 2
    r = np.sqrt(ax[:, None, None] ** 2 + ax[None, :, None] ** 2 + ax[None, None, :] ** 2)
    t = np.clip((r - radius_px) / max(edge_px, 1e-6), 0.0, 1.0)
    return (0.5 + 0.5 * np.cos(np.pi * t)).astype(np.float32)


def resize_map(volume: np.ndarray, box: int) -> np.ndarray:
    """Fourier crop/pad a cubic map to ``box``³ about voxel box//2 (pixel size × old/new box; the mean value is kept)."""
    from torch_fourier_rescale import fourier_rescale_3d

    d = volume.shape[0]
    if d == box:
        return np.asarray(volume, np.float32)
    v = np.asarray(volume, np.float32)
    if d % 2:
        v = np.roll(v, 1, axis=(0, 1, 2))
    out, _ = fourier_rescale_3d(torch.from_numpy(np.ascontiguousarray(v)), target_shape=(box, box, box))
    out = out.numpy()
    if box % 2:
        out = np.roll(out, -1, axis=(0, 1, 2))
    return out.astype(np.float32)  # torch-fourier-rescale keeps the mean value
