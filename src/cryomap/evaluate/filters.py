"""Fourier low-pass filtering of maps to a resolution in Å (raised-cosine edge)."""

from __future__ import annotations

import numpy as np
import torch


def low_pass(volume: np.ndarray, apix: float, resolution_A: float, falloff_shells: float = 1.0) -> np.ndarray:
    """Low-pass ``volume`` (cubic, ``apix`` Å/voxel) to ``resolution_A`` Å.

    Uses ``torch_fourier_filter.low_pass_filter``: flat up to ``falloff_shells`` shells (1/D
    cycles/voxel each) below ``apix / resolution_A`` cycles/voxel, then a quarter-cosine down to
    zero at exactly ``apix / resolution_A``: nothing finer than the stated resolution survives,
    so the FSC of the result with the original crosses 0.143 at that resolution (within a
    shell). A resolution finer than Nyquist (``2 * apix``) returns the map unchanged.
    """
    from torch_fourier_filter.bandpass import low_pass_filter

    volume = np.asarray(volume, dtype=np.float32)
    cutoff = apix / float(resolution_A)
    if cutoff >= 0.5:
        return volume.copy()
    shape = tuple(int(s) for s in volume.shape)
    falloff = falloff_shells / shape[0]
    filt = low_pass_filter(max(cutoff - falloff, 0.0), falloff, shape, rfft=True, fftshift=False)
    out = torch.fft.irfftn(torch.fft.rfftn(torch.from_numpy(volume)) * filt, s=shape)
    return out.numpy()
