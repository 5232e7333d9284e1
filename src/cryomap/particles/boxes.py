"""Per-micrograph particle image operations: box cutting with an edge policy, Fourier binning and
RELION-style background normalisation. Pure array functions, no file I/O.

Box convention (RELION's): a particle at integer centre ``(xc, yc)`` (x = column, y = row) is the
``box``×``box`` window whose pixel ``(box // 2, box // 2)`` is ``(xc, yc)``, i.e. rows
``yc - box//2 .. yc - box//2 + box - 1``. Fractional coordinates are rounded to the nearest pixel
by the caller, which records the sub-pixel remainder in the particle's origin.
"""

from __future__ import annotations

import numpy as np

EDGE_POLICIES = ("skip", "pad")


def box_fits(xc: np.ndarray, yc: np.ndarray, box: int, shape: tuple[int, int]) -> np.ndarray:
    """True where the whole box around integer centres (xc, yc) lies inside an image of ``shape`` (rows, cols)."""
    x0 = np.asarray(xc) - box // 2
    y0 = np.asarray(yc) - box // 2
    return (x0 >= 0) & (y0 >= 0) & (x0 + box <= shape[1]) & (y0 + box <= shape[0])


def background_mask(box: int, bg_radius: float) -> np.ndarray:
    """Boolean (box, box) mask of pixels farther than ``bg_radius`` px from the box centre (box//2, box//2)."""
    c = box // 2
    yy, xx = np.mgrid[:box, :box]
    return (xx - c) ** 2 + (yy - c) ** 2 > float(bg_radius) ** 2


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


def fourier_bin(images: np.ndarray, out_box: int) -> np.ndarray:
    """Downsample (n, box, box) images to (n, out_box, out_box) by Fourier cropping.

    Uses torch-fourier-rescale (crop of the centred DFT, mean preserved); the pixel size grows by
    ``box / out_box``.
    """
    if images.shape[-1] == out_box:
        return images
    import torch
    from torch_fourier_rescale import fourier_rescale_2d

    with torch.no_grad():
        t = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
        res, _ = fourier_rescale_2d(t, target_shape=(out_box, out_box))
    return res.numpy().astype(np.float32, copy=False)


def normalize_background(images: np.ndarray, bg_radius: float, invert: bool = False, *, inplace: bool = False) -> np.ndarray:
    """RELION normalisation: per image, mean 0 and standard deviation 1 over the pixels outside a
    circle of ``bg_radius`` px around the box centre; ``invert`` then flips the contrast (×−1).

    Images whose background is constant are only shifted (divided by 1), not blown up. With
    ``inplace`` a float32 input is overwritten instead of copied (saves one batch of memory).
    """
    if len(images) == 0:
        return images.astype(np.float32, copy=False)
    mask = background_mask(images.shape[-1], bg_radius)
    if not mask.any():
        raise ValueError(f"background radius {bg_radius} px leaves no background in a {images.shape[-1]} px box")
    out = images if inplace and images.dtype == np.float32 else np.array(images, dtype=np.float32, copy=True)
    sign = -1.0 if invert else 1.0
    for im in out:  # one image at a time: no batch-sized float64 temporaries
        bg = im[mask].astype(np.float64)
        mean, std = bg.mean(), bg.std()
        im -= np.float32(mean)
        im *= np.float32(sign / (std if std > 0 else 1.0))
    return out
