"""Box cutting with an edge policy, per micrograph. Pure array functions, no file I/O (binning and
background normalisation are the shared :func:`cryomap.core.fourier.resize_images` and
:func:`cryomap.core.images.standardize_images`).

Box convention (RELION's): a particle at integer centre ``(xc, yc)`` (x = column, y = row) is the
``box``×``box`` window whose pixel ``(box // 2, box // 2)`` is ``(xc, yc)``, i.e. rows
``yc - box//2 .. yc - box//2 + box - 1``. Fractional coordinates are rounded to the nearest pixel
by the caller, which records the sub-pixel remainder in the particle's origin.
"""

from __future__ import annotations

import numpy as np

from cryomap.core.images import background_mask

EDGE_POLICIES = ("skip", "pad")


def box_fits(xc: np.ndarray, yc: np.ndarray, box: int, shape: tuple[int, int]) -> np.ndarray:
    """True where the whole box around integer centres (xc, yc) lies inside an image of ``shape`` (rows, cols)."""
    x0 = np.asarray(xc) - box // 2
    y0 = np.asarray(yc) - box // 2
    return (x0 >= 0) & (y0 >= 0) & (x0 + box <= shape[1]) & (y0 + box <= shape[0])


def box_windows(
    micrograph: np.ndarray, xc: np.ndarray, yc: np.ndarray, box: int, edge: str = "skip",
    bg_radius: float | None = None,
) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """The ``box``×``box`` windows at integer centres, uncopied; returns (windows, kept, padded).

    A box inside the micrograph is a view of it (read where it lies: no copy). ``edge="skip"``
    drops boxes that leave the micrograph (``kept`` is False for them); ``edge="pad"`` keeps them
    as new arrays whose pixels outside the micrograph hold the mean of the box's in-micrograph
    background pixels (outside ``bg_radius``; all in-micrograph pixels when none of those lie
    inside), flagging them in ``padded``. ``windows`` holds the kept boxes only, in order.
    """
    if edge not in EDGE_POLICIES:
        raise ValueError(f"edge policy must be one of {EDGE_POLICIES}, got {edge!r}")
    xc = np.asarray(xc, dtype=np.int64)
    yc = np.asarray(yc, dtype=np.int64)
    fits = box_fits(xc, yc, box, micrograph.shape)
    kept = fits.copy() if edge == "skip" else np.ones(len(xc), dtype=bool)
    padded = kept & ~fits
    half = box // 2
    windows = []
    for i in np.flatnonzero(kept):
        y0, x0 = int(yc[i]) - half, int(xc[i]) - half
        if fits[i]:
            windows.append(micrograph[y0 : y0 + box, x0 : x0 + box])
        else:
            windows.append(_padded_box(micrograph, y0, x0, box, bg_radius))
    return windows, kept, padded


def _padded_box(micrograph: np.ndarray, y0: int, x0: int, box: int, bg_radius: float | None) -> np.ndarray:
    """The box with corner (y0, x0) px that leaves the micrograph: the part inside copied, the rest the
    mean of the in-micrograph background pixels (see :func:`box_windows`)."""
    rows, cols = micrograph.shape
    bg = background_mask(box, bg_radius if bg_radius is not None else 0.75 * box / 2)
    inside = np.zeros((box, box), dtype=bool)
    ya, yb = max(y0, 0), min(y0 + box, rows)
    xa, xb = max(x0, 0), min(x0 + box, cols)
    img = np.zeros((box, box), dtype=np.float32)
    if ya < yb and xa < xb:
        img[ya - y0 : yb - y0, xa - x0 : xb - x0] = micrograph[ya:yb, xa:xb]
        inside[ya - y0 : yb - y0, xa - x0 : xb - x0] = True
    sel = inside & bg if (inside & bg).any() else inside
    img[~inside] = float(img[sel].mean()) if sel.any() else 0.0
    return img


def cut_boxes(
    micrograph: np.ndarray, xc: np.ndarray, yc: np.ndarray, box: int, edge: str = "skip",
    bg_radius: float | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`box_windows` copied into one float32 array (k, box, box); returns (images, kept, padded)."""
    windows, kept, padded = box_windows(micrograph, xc, yc, box, edge, bg_radius)
    out = np.empty((len(windows), box, box), dtype=np.float32)
    for k, window in enumerate(windows):
        out[k] = window
    return out, kept, padded
