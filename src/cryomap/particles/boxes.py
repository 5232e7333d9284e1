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


def cut_boxes(
    micrograph: np.ndarray, xc: np.ndarray, yc: np.ndarray, box: int, edge: str = "skip",
    bg_radius: float | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cut ``box``×``box`` windows at integer centres; returns (images, kept, padded).

    ``edge="skip"`` drops boxes that leave the micrograph (``kept`` is False for them);
    ``edge="pad"`` keeps them and fills the pixels outside the micrograph with the mean of the
    box's in-micrograph background pixels (outside ``bg_radius``; all in-micrograph pixels when
    none of those lie inside), flagging them in ``padded``. ``images`` holds the kept boxes only.
    """
    if edge not in EDGE_POLICIES:
        raise ValueError(f"edge policy must be one of {EDGE_POLICIES}, got {edge!r}")
    xc = np.asarray(xc, dtype=np.int64)
    yc = np.asarray(yc, dtype=np.int64)
    fits = box_fits(xc, yc, box, micrograph.shape)
    kept = fits.copy() if edge == "skip" else np.ones(len(xc), dtype=bool)
    padded = kept & ~fits
    out = np.empty((int(kept.sum()), box, box), dtype=np.float32)
    half = box // 2
    bg = background_mask(box, bg_radius if bg_radius is not None else 0.75 * box / 2)
    rows, cols = micrograph.shape
    for k, i in enumerate(np.flatnonzero(kept)):
        y0, x0 = int(yc[i]) - half, int(xc[i]) - half
        if fits[i]:
            out[k] = micrograph[y0 : y0 + box, x0 : x0 + box]
            continue
        # pad: copy the part inside the micrograph, fill the rest with the background mean
        inside = np.zeros((box, box), dtype=bool)
        ya, yb = max(y0, 0), min(y0 + box, rows)
        xa, xb = max(x0, 0), min(x0 + box, cols)
        img = np.zeros((box, box), dtype=np.float32)
        if ya < yb and xa < xb:
            img[ya - y0 : yb - y0, xa - x0 : xb - x0] = micrograph[ya:yb, xa:xb]
            inside[ya - y0 : yb - y0, xa - x0 : xb - x0] = True
        sel = inside & bg if (inside & bg).any() else inside
        img[~inside] = float(img[sel].mean()) if sel.any() else 0.0
        out[k] = img
    return out, kept, padded
