"""Per-image normalisation every stage shares: statistics over the whole box or the background ring.

RELION normalises extracted particles to mean 0 and standard deviation 1 over the pixels outside a
circle (the background ring, ``bg_radius`` px from the box centre ``box // 2``); the method report
standardises over the whole box. Both are :func:`standardize_images`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def background_mask(box: int, bg_radius: float) -> np.ndarray:
    """Boolean (box, box) mask of pixels farther than ``bg_radius`` px from the box centre (box//2, box//2)."""
    c = box // 2
    yy, xx = np.mgrid[:box, :box]
    return (xx - c) ** 2 + (yy - c) ** 2 > float(bg_radius) ** 2


def all_finite(arr: np.ndarray) -> bool:
    """True when no value of an image, stack or map is NaN or ±inf.

    A float32 array with contiguous rows is summed in double by OpenCV (``sumElems``, as a 2D
    array): a NaN or an infinity anywhere makes the sum non-finite, and finite float32 values
    cannot overflow a double. One vectorised pass with no temporary: on 4096² micrographs half
    the time of ``np.isfinite(a).all()``, which makes an array-sized boolean temporary
    (``cv2.checkRange`` took longer still). Other arrays go the numpy way.
    """
    import cv2

    a = np.asarray(arr)
    if a.size == 0:
        return True
    if a.dtype != np.float32 or a.ndim < 2 or (a.ndim > 2 and not a.flags.c_contiguous):
        return bool(np.isfinite(a).all())
    return bool(np.isfinite(cv2.sumElems(a.reshape(-1, a.shape[-1]))[0]))


def image_mean_var(image: np.ndarray) -> tuple[float, float]:
    """Population mean and variance of one float32 image (h, w), contiguous or a strided view.

    Two OpenCV reductions accumulated in double (``cv2.mean``, ``cv2.norm`` L2²; var = E[x²] − mean²,
    clipped at 0), a third of the time of ``cv2.meanStdDev``. They release the GIL, so images run
    in threads.
    """
    import cv2

    mean = cv2.mean(image)[0]
    return mean, max(cv2.norm(image, cv2.NORM_L2SQR) / image.size - mean * mean, 0.0)


class Standardizer:
    """One image's standardisation, ready to apply to many images of one size.

    ``(x − mean)·sign / std`` with the statistics over the whole image (``bg_radius`` None, the
    method report's standardisation) or over the pixels farther than ``bg_radius`` px from the
    centre (RELION's background normalisation); ``invert`` makes the sign −1. An image whose
    statistics region is constant is only shifted (divided by 1), never blown up.
    """

    def __init__(self, shape: tuple[int, int], bg_radius: float | None = None, invert: bool = False) -> None:
        self.weights = None  # the background ring as float32 0/1 (None: the whole image)
        self.count = None
        if bg_radius is not None:
            ring = background_mask(shape[-1], bg_radius) if shape[-1] == shape[-2] else None
            if ring is None or not ring.any():
                raise ValueError(f"background radius {bg_radius} px leaves no background in a {shape[-1]} px box")
            self.weights = ring.astype(np.float32)
            self.count = int(ring.sum())
        self.sign = -1.0 if invert else 1.0

    def apply(self, src: np.ndarray, dst: np.ndarray) -> None:
        """Write the standardised ``src`` (h, w) float32, contiguous or a strided view such as a window of a
        micrograph, into ``dst`` (h, w) float32, which may be ``src`` itself.

        The statistics are OpenCV reductions accumulated in double; the ring's come from
        ``src × ring`` (0/1 weights) written into ``dst`` as scratch: vectorised, where
        ``cv2.mean`` with a mask is a per-pixel loop (measured: 25 against 48 µs per 128² box,
        78 against 155 µs per 256² box, the same statistics on the boxes measured). Then one call for
        (x − mean)·sign/std, written straight into ``dst``. No temporary unless ``dst`` is ``src``;
        the GIL released, so images run in threads.
        """
        import cv2

        if self.weights is None:
            m, var = image_mean_var(src)
        else:
            scratch = dst if not np.may_share_memory(src, dst) else np.empty_like(dst)
            cv2.multiply(src, self.weights, dst=scratch)
            m = cv2.sumElems(scratch)[0] / self.count
            var = max(cv2.norm(scratch, cv2.NORM_L2SQR) / self.count - m * m, 0.0)
        scale = self.sign / np.sqrt(var) if var > 0 else self.sign
        cv2.addWeighted(src, scale, src, 0.0, -m * scale, dst=dst, dtype=cv2.CV_32F)


def image_stats(image: np.ndarray) -> tuple[float, float, float, float]:
    """(min, max, sum, sum of squares) of one float32 image (h, w): what an MRC header's dmin, dmax, dmean
    and rms are made of. Three OpenCV reductions (sums in double), cheap while the image is in cache."""
    import cv2

    lo, hi, _, _ = cv2.minMaxLoc(image)
    return lo, hi, cv2.sumElems(image)[0], cv2.norm(image, cv2.NORM_L2SQR)


def standardize_images(
    images: np.ndarray | Sequence[np.ndarray],
    bg_radius: float | None = None,
    *,
    invert: bool = False,
    inplace: bool = False,
    threads: int | None = None,
    out: np.ndarray | None = None,
    stats: np.ndarray | None = None,
) -> np.ndarray:
    """Per image: subtract the mean and divide by the standard deviation; float32 (k, h, w).

    ``bg_radius`` None: statistics over the whole box (the method report's standardisation).
    ``bg_radius`` r (px): over the pixels farther than r from the centre (RELION's background
    normalisation). ``invert`` then flips the contrast (×−1). See :class:`Standardizer`.
    ``images``: a (k, h, w) array, or a sequence of k (h, w) float32 arrays read where they lie
    (windows of a micrograph: no copy is made of them). The result goes to ``out`` (k, h, w)
    float32 when given; else, with ``inplace``, over a float32 array input; else to a new array.
    ``stats``: a (k, 4) float64 array that receives each result's :func:`image_stats`, taken while
    the image is in cache. Statistics (population mean and std) accumulate in double.
    ``threads``: images in parallel (:func:`cryomap.core.threads.for_each_image`; the same bytes
    for any number).
    """
    from cryomap.core.threads import for_each_image

    if isinstance(images, np.ndarray) or not isinstance(images, Sequence):
        arr = np.asarray(images)
        if arr.ndim == 2:
            arr = arr[None]
        if arr.dtype != np.float32 or not arr.flags.c_contiguous:
            arr = np.array(arr, dtype=np.float32, order="C", copy=True)
            inplace = True  # our own copy
        src: np.ndarray | Sequence[np.ndarray] = arr
        shape = arr.shape
    else:
        src = [np.asarray(im, dtype=np.float32) for im in images]
        shape = (len(src), *(src[0].shape if src else (0, 0)))
    if out is None:
        out = src if inplace and isinstance(src, np.ndarray) and src.flags.writeable else np.empty(shape, np.float32)
    if out.shape != tuple(shape) or out.dtype != np.float32:
        raise ValueError(f"out must be float32 of shape {tuple(shape)}, got {out.dtype} {out.shape}")
    if len(out) == 0:
        return out
    standardizer = Standardizer(out.shape[1:], bg_radius, invert)

    def one(k: int) -> None:
        standardizer.apply(src[k], out[k])
        if stats is not None:
            stats[k] = image_stats(out[k])

    for_each_image(one, len(out), threads, out.shape[-2] * out.shape[-1])
    return out
