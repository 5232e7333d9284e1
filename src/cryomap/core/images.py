"""Per-image normalisation every stage shares: statistics over the whole box or the background ring.

RELION normalises extracted particles to mean 0 and standard deviation 1 over the pixels outside a
circle (the background ring, ``bg_radius`` px from the box centre ``box // 2``); the method report
standardises over the whole box. Both are :func:`standardize_images`.
"""

from __future__ import annotations

import numpy as np


def background_mask(box: int, bg_radius: float) -> np.ndarray:
    """Boolean (box, box) mask of pixels farther than ``bg_radius`` px from the box centre (box//2, box//2)."""
    c = box // 2
    yy, xx = np.mgrid[:box, :box]
    return (xx - c) ** 2 + (yy - c) ** 2 > float(bg_radius) ** 2


def image_mean_var(image: np.ndarray, mask: np.ndarray | None = None, count: int | None = None) -> tuple[float, float]:
    """Population mean and variance of one contiguous float32 image (H, W), over ``mask`` (uint8, nonzero = in) if given.

    Two OpenCV reductions accumulated in double (``cv2.mean``, ``cv2.norm`` L2²; var = E[x²] − mean²,
    clipped at 0), a third of the time of ``cv2.meanStdDev``; ``count``: the mask's nonzero pixels
    (counted here when not given). They release the GIL, so images run in threads.
    """
    import cv2

    n = image.size if mask is None else (int(np.count_nonzero(mask)) if count is None else int(count))
    mean = cv2.mean(image, mask=mask)[0]
    return mean, max(cv2.norm(image, cv2.NORM_L2SQR, mask=mask) / n - mean * mean, 0.0)


def standardize_images(
    images: np.ndarray,
    bg_radius: float | None = None,
    *,
    invert: bool = False,
    inplace: bool = False,
    threads: int | None = None,
) -> np.ndarray:
    """Per image: subtract the mean and divide by the standard deviation; float32 (k, h, w).

    ``bg_radius`` None: statistics over the whole box (the method report's standardisation).
    ``bg_radius`` r (px): over the pixels farther than r from the centre (RELION's background
    normalisation). ``invert`` then flips the contrast (×−1). An image whose statistics region is
    constant is only shifted (divided by 1), never blown up. With ``inplace`` a float32 input is
    overwritten instead of copied. Statistics (population mean and std) accumulate in double.
    ``threads``: images in parallel (:func:`cryomap.core.threads.for_each_image`; the same bytes
    for any number).
    """
    import cv2

    from cryomap.core.threads import for_each_image

    arr = np.asarray(images)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.dtype == np.float32 and arr.flags.c_contiguous:
        src = arr
        out = arr if inplace and arr.flags.writeable else np.empty_like(arr)
    else:
        src = out = np.array(arr, dtype=np.float32, order="C", copy=True)
    if len(out) == 0:
        return out
    mask = None
    if bg_radius is not None:
        ring = background_mask(out.shape[-1], bg_radius) if out.shape[-1] == out.shape[-2] else None
        if ring is None or not ring.any():
            raise ValueError(f"background radius {bg_radius} px leaves no background in a {out.shape[-1]} px box")
        mask = ring.astype(np.uint8)
    count = None if mask is None else int(ring.sum())
    sign = -1.0 if invert else 1.0

    # One OpenCV call for the statistics and one for (x − mean)·sign/std, written straight into the
    # output: no batch-sized temporary, the GIL released, so the images run in threads.
    def one(k: int) -> None:
        m, var = image_mean_var(src[k], mask, count)
        scale = sign / np.sqrt(var) if var > 0 else sign
        cv2.addWeighted(src[k], scale, src[k], 0.0, -m * scale, dst=out[k], dtype=cv2.CV_32F)

    for_each_image(one, len(out), threads, out.shape[-2] * out.shape[-1])
    return out
