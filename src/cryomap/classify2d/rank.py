"""Ranking of class averages: resolution from the FRC of two half-set averages, then size.

The resolution of a class is where the Fourier ring correlation between the averages of two
random halves of its particles first falls below :data:`FRC_THRESHOLD` = 0.143 (the half-set
criterion of Rosenthal & Henderson, as RELION and cryoSPARC use for half maps), linearly
interpolated between rings, in Å. A curve that never falls below gives the Nyquist resolution; a
class with fewer than :data:`MIN_HALF` particles in either half has no resolution (NaN). Classes
are ranked by resolution (finest first), ties and NaNs broken by size (largest first); empty
classes go last.
"""

from __future__ import annotations

import numpy as np
import torch

#: FRC threshold between half-set averages (Å values are reported at this crossing).
FRC_THRESHOLD = 0.143
#: Fewer particles than this in either half: no resolution.
MIN_HALF = 2


def frc_curves(half_a: np.ndarray, half_b: np.ndarray) -> np.ndarray:
    """FRC (K, D//2 + 1) between two stacks of half-set averages (K, D, D) (torch-fourier-shell-correlation)."""
    from torch_fourier_shell_correlation import fourier_ring_correlation

    a = torch.as_tensor(np.asarray(half_a, np.float32))
    b = torch.as_tensor(np.asarray(half_b, np.float32))
    return fourier_ring_correlation(a, b).numpy()


def crossing_resolution(frc: np.ndarray, box: int, apix: float, threshold: float = FRC_THRESHOLD) -> float:
    """Resolution (Å) where ``frc`` (rings 0..D/2) first falls below ``threshold``; Nyquist if it never does."""
    freq = np.arange(len(frc)) / (box * apix)
    for k in range(1, len(frc)):
        if not np.isfinite(frc[k]) or frc[k] < threshold:
            c0, c1 = frc[k - 1], frc[k] if np.isfinite(frc[k]) else 0.0
            frac = 0.0 if c0 == c1 else float(np.clip((c0 - threshold) / (c0 - c1), 0.0, 1.0))
            f = freq[k - 1] + frac * (freq[k] - freq[k - 1])
            return float(box * apix) if f <= 0 else float(1.0 / max(f, 1.0 / (box * apix)))
    return float(2.0 * apix)


def class_resolutions(halves: np.ndarray, half_counts: np.ndarray, apix: float,
                      threshold: float = FRC_THRESHOLD) -> tuple[np.ndarray, np.ndarray]:
    """(resolution Å (K,), FRC curves (K, D//2+1)) from half averages (2, K, D, D) and counts (2, K)."""
    curves = frc_curves(halves[0], halves[1])
    box = halves.shape[-1]
    res = np.array([crossing_resolution(c, box, apix, threshold) for c in curves])
    res[(np.asarray(half_counts) < MIN_HALF).any(axis=0)] = np.nan
    return res, curves


def rank_order(resolution: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Class indices best first: finest resolution, then most particles; NaN resolutions after, empty classes last."""
    res = np.asarray(resolution, float)
    cnt = np.asarray(counts)
    key_res = np.where(np.isfinite(res), res, np.inf)
    return np.lexsort((-cnt, key_res, cnt == 0))
