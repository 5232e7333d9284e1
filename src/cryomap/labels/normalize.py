"""cryo2struct map normalisation and binary thresholding of labels."""

from __future__ import annotations

import numpy as np

#: The percentile cryo2struct divides by.
NORMALIZE_PERCENTILE = 95.0


def normalize_map(data: np.ndarray) -> np.ndarray:
    """Normalise a density map the way cryo2struct does; returns float32 values in [0, 1].

    ``p`` is the 95th percentile of the **non-zero** voxels (zero padding and masked-out
    background therefore do not pull it down); the map is divided by ``p``, negative values
    become 0 and values above 1 become 1.

    Raises ``ValueError`` when the map has no non-zero voxel or ``p`` is not positive (a map
    whose density is mostly negative cannot be normalised this way).
    """
    arr = np.asarray(data, dtype=np.float32)
    nonzero = arr[arr != 0]
    if nonzero.size == 0:
        raise ValueError("map is all zeros; nothing to normalise")
    p = float(np.percentile(nonzero, NORMALIZE_PERCENTILE))
    if not np.isfinite(p) or p <= 0:
        raise ValueError(f"95th percentile of the non-zero voxels is {p:g}, not positive; is the map inverted?")
    out = arr / np.float32(p)
    np.clip(out, 0.0, 1.0, out=out)
    return out


def threshold_map(data: np.ndarray, t: float) -> np.ndarray:
    """Binary label: voxels below ``t`` become 0, voxels at or above ``t`` become 1 (float32)."""
    if not np.isfinite(t):
        raise ValueError(f"threshold must be a finite number, got {t!r}")
    return (np.asarray(data) >= t).astype(np.float32)
