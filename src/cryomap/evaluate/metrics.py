"""Real-space map metrics: CC, CC about the mean, MSE, 3D SSIM, Dice and IoU at a contour.

Definitions (the sums run over the mask's voxels when a mask is given, weighted by it):

* ``cc``: ``Σ a·b / sqrt(Σ a² · Σ b²)`` — correlation about zero (Chimera's "correlation").
* ``cc_mean``: the same after subtracting each map's (masked) mean — Pearson correlation,
  Chimera's "correlation about mean".
* ``mse``: mean of ``(a - b)²`` in the maps' own units (meaningful for maps on the same scale,
  e.g. a prediction against its normalised label); ``mse_zscored`` after scaling each map to
  mean 0 / standard deviation 1 (scale-free, used to compare maps of different units).
* ``ssim``: ``skimage.metrics.structural_similarity`` in 3D (7³ window) on maps each min–max
  scaled to [0, 1] (``data_range = 1``), so maps of different units are comparable.
* ``dice`` = 2|A∩B| / (|A|+|B|), ``iou`` = |A∩B| / |A∪B| of the maps binarised at ``>= contour``.
"""

from __future__ import annotations

import numpy as np


def _weights(a: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    if mask is None:
        return np.ones_like(a, dtype=np.float64)
    if mask.shape != a.shape:
        raise ValueError(f"mask shape {mask.shape} differs from map shape {a.shape}")
    return np.asarray(mask, dtype=np.float64)


def _check(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"maps differ in shape: {a.shape} vs {b.shape}")
    return a, b


def cross_correlation(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Correlation about zero, ``Σ w a b / sqrt(Σ w a² Σ w b²)``."""
    a, b = _check(a, b)
    w = _weights(a, mask)
    den = np.sqrt(np.sum(w * a * a) * np.sum(w * b * b))
    return float(np.sum(w * a * b) / den) if den > 0 else 0.0


def cross_correlation_about_mean(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Pearson correlation (each map minus its weighted mean)."""
    a, b = _check(a, b)
    w = _weights(a, mask)
    sw = np.sum(w)
    if sw <= 0:
        return 0.0
    return cross_correlation(a - np.sum(w * a) / sw, b - np.sum(w * b) / sw, w)


def mean_squared_error(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Weighted mean of ``(a - b)²`` in the maps' units."""
    a, b = _check(a, b)
    w = _weights(a, mask)
    return float(np.sum(w * (a - b) ** 2) / max(np.sum(w), 1e-12))


def zscore(a: np.ndarray) -> np.ndarray:
    """``(a - mean) / std`` (std 0 → all zeros)."""
    a = np.asarray(a, dtype=np.float64)
    s = a.std()
    return (a - a.mean()) / s if s > 0 else np.zeros_like(a)


def _minmax(a: np.ndarray) -> np.ndarray:
    lo, hi = float(a.min()), float(a.max())
    return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a, dtype=np.float64)


def ssim3d(a: np.ndarray, b: np.ndarray) -> float:
    """3D structural similarity (skimage, 7³ window) of the min–max scaled maps."""
    from skimage.metrics import structural_similarity

    a, b = _check(a, b)
    win = min(7, min(a.shape) - (1 - min(a.shape) % 2))
    return float(structural_similarity(_minmax(a), _minmax(b), data_range=1.0, win_size=win))


def dice(a_bin: np.ndarray, b_bin: np.ndarray) -> float:
    """Dice coefficient of two boolean arrays (1.0 when both are empty)."""
    a_bin, b_bin = np.asarray(a_bin, bool), np.asarray(b_bin, bool)
    s = a_bin.sum() + b_bin.sum()
    return float(2.0 * np.logical_and(a_bin, b_bin).sum() / s) if s else 1.0


def iou(a_bin: np.ndarray, b_bin: np.ndarray) -> float:
    """Intersection over union (Jaccard) of two boolean arrays (1.0 when both are empty)."""
    a_bin, b_bin = np.asarray(a_bin, bool), np.asarray(b_bin, bool)
    u = np.logical_or(a_bin, b_bin).sum()
    return float(np.logical_and(a_bin, b_bin).sum() / u) if u else 1.0


def default_contour(truth: np.ndarray) -> float:
    """Contour used when none is given: Otsu's threshold of the truth map (skimage).

    Otsu separates molecule from solvent without knowing the map's units; labels normalised
    the cryo2struct way (0…1) usually land near 0.2–0.4.
    """
    from skimage.filters import threshold_otsu

    return float(threshold_otsu(np.asarray(truth, dtype=np.float64)))


def contour_for_volume(volume: np.ndarray, n_voxels: int) -> float:
    """The contour at which ``volume >= contour`` encloses ``n_voxels`` voxels (equal-volume contour)."""
    flat = np.sort(np.asarray(volume, dtype=np.float64).ravel())[::-1]
    n = int(np.clip(n_voxels, 1, flat.size))
    return float(flat[n - 1])


def map_metrics(
    pred: np.ndarray,
    truth: np.ndarray,
    contour: float | None = None,
    mask: np.ndarray | None = None,
) -> dict:
    """All real-space metrics of ``pred`` against ``truth``.

    ``contour`` (truth units; default :func:`default_contour`) binarises the truth. Dice/IoU are
    given twice: ``dice``/``iou`` with the prediction binarised at the same contour (maps on
    the same scale), and ``dice_equal_volume``/``iou_equal_volume`` with the prediction
    binarised at the contour that encloses the same volume as the truth (scale-free, used for
    maps in other units such as reconstructions).
    """
    pred, truth = _check(pred, truth)
    if contour is None:
        contour = default_contour(truth)
    t_bin = truth >= contour
    p_bin = pred >= contour
    ev_contour = contour_for_volume(pred, int(t_bin.sum()))
    p_ev = pred >= ev_contour
    return {
        "cc": cross_correlation(pred, truth, mask),
        "cc_mean": cross_correlation_about_mean(pred, truth, mask),
        "mse": mean_squared_error(pred, truth, mask),
        "mse_zscored": mean_squared_error(zscore(pred), zscore(truth), mask),
        "ssim": ssim3d(pred, truth),
        "contour": float(contour),
        "truth_voxels_at_contour": int(t_bin.sum()),
        "dice": dice(p_bin, t_bin),
        "iou": iou(p_bin, t_bin),
        "equal_volume_contour": ev_contour,
        "dice_equal_volume": dice(p_ev, t_bin),
        "iou_equal_volume": iou(p_ev, t_bin),
    }
