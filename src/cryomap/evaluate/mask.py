"""Soft solvent masks for masked FSC and masked metrics.

The auto-mask follows RELION's ``relion_mask_create`` recipe: low-pass the map (15 Å by
default), threshold it, grow the binary mask by ``extend_A`` Å and add a raised-cosine soft
edge ``soft_edge_A`` Å wide. Distances come from a Euclidean distance transform (scipy), so
the growth is isotropic.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from cryomap.evaluate.filters import low_pass


def soft_edge(binary: np.ndarray, extend_px: float, soft_px: float) -> np.ndarray:
    """Grow ``binary`` by ``extend_px`` voxels and add a cosine edge ``soft_px`` voxels wide (values 0…1)."""
    binary = np.asarray(binary, bool)
    if not binary.any():
        return np.zeros(binary.shape, np.float32)
    dist = ndimage.distance_transform_edt(~binary)
    mask = np.zeros(binary.shape, np.float64)
    mask[dist <= extend_px] = 1.0
    if soft_px > 0:
        ramp = (dist > extend_px) & (dist < extend_px + soft_px)
        mask[ramp] = 0.5 * (1.0 + np.cos(np.pi * (dist[ramp] - extend_px) / soft_px))
    return mask.astype(np.float32)


def auto_mask(
    volume: np.ndarray,
    apix: float,
    threshold: float | None = None,
    lowpass_A: float = 15.0,
    extend_A: float = 3.0,
    soft_edge_A: float = 6.0,
) -> np.ndarray:
    """Soft mask around the molecule in ``volume`` (``apix`` Å/voxel); values in [0, 1].

    ``threshold`` applies to the low-passed map; by default Otsu's threshold of it (skimage).
    Only the largest connected component is kept, so noise blobs do not enter the mask.
    """
    from skimage.filters import threshold_otsu

    lp = low_pass(volume, apix, lowpass_A)
    if threshold is None:
        threshold = float(threshold_otsu(lp))
    binary = lp >= threshold
    labels, n = ndimage.label(binary)
    if n > 1:
        sizes = ndimage.sum(binary, labels, index=np.arange(1, n + 1))
        binary = labels == (int(np.argmax(sizes)) + 1)
    return soft_edge(binary, extend_A / apix, soft_edge_A / apix)


def spherical_mask(box: int, radius_px: float, soft_px: float = 3.0) -> np.ndarray:
    """Soft sphere of ``radius_px`` voxels centred at ``box // 2``."""
    c = box // 2
    z, y, x = np.ogrid[:box, :box, :box]
    r = np.sqrt((z - c) ** 2 + (y - c) ** 2 + (x - c) ** 2)
    return soft_edge(r <= radius_px, 0.0, soft_px)
