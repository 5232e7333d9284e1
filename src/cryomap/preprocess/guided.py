"""Edge-preserving smoothing with the guided filter (He, Sun & Tang 2013): OpenCV contrib's
``cv2.ximgproc.guidedFilter`` when the guide is another image, and the same algorithm from four
OpenCV box filters when the guide is the image itself (the default; ximgproc runs six there).

The output is locally a linear function of the guide, ``q = a·I + b`` over windows of
``(2·radius + 1)²`` px, with ``a = cov(I, p) / (var(I) + eps)``: where the guide varies much more than
``eps`` (an edge) the image is kept, where it varies much less (a flat region) it is averaged.
``eps`` is therefore given relative to each image's variance (``eps``·var(guide)), so the same
setting means the same thing for every particle whatever its scale.

The guide is the image itself (``guide="self"``, default) or another step's output of the same
chain (by its key, e.g. ``"denoise"``: smooth the noisy image where the denoised one is flat).
Note on the CryoSegNet code the report comes from: it passes a Wiener output scaled by 1/255 as
guide (variance ≤ 1/31² of the image's) with ``eps = 0.1``; then ``a ≈ 0`` everywhere and the
"guided filter" is two box blurs, edges included. The defaults here (``radius 2``, ``eps 0.2``
relative) keep a step edge (tests/test_preprocess_ops.py shows both).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cryomap.core.images import image_mean_var
from cryomap.core.threads import for_each_image
from cryomap.errors import BadInputError
from cryomap.particles.source import BatchContext, ParticleSource
from cryomap.preprocess.base import Op


def guided_filter(images: np.ndarray, radius: int = 2, eps: float = 0.2, guide: np.ndarray | None = None,
                  *, eps_relative: bool = True, threads: int | None = None) -> np.ndarray:
    """Guided filter of each image (N, H, W) float32 by ``guide`` (same shape; default the images).

    ``radius`` px; ``eps`` the regularisation, × var(guide) per image when ``eps_relative``
    (the default), absolute otherwise. ``threads``: images in parallel (OpenCV releases the GIL).
    """
    import cv2

    arr = np.ascontiguousarray(images, dtype=np.float32)  # OpenCV takes contiguous rows
    if arr.ndim == 2:
        arr = arr[None]
    g = arr if guide is None else np.ascontiguousarray(np.asarray(guide, dtype=np.float32).reshape(arr.shape))
    if radius < 1 or not eps > 0:
        raise ValueError(f"radius must be ≥ 1 px and eps > 0, got {radius}, {eps}")
    out = np.empty_like(arr)

    def eps_of(guide_k: np.ndarray) -> float:
        if not eps_relative:
            return float(eps)
        var = image_mean_var(guide_k)[1]  # population variance, accumulated in double
        return eps * var if var > 0 else float(eps)

    def one(k: int) -> None:
        out[k] = cv2.ximgproc.guidedFilter(g[k], arr[k], int(radius), eps_of(g[k]))

    kernel = np.full(2 * int(radius) + 1, 1.0 / (2 * int(radius) + 1), np.float32)

    def box(a: np.ndarray) -> np.ndarray:  # the (2r + 1)² window mean; separable: faster than cv2.boxFilter here
        return cv2.sepFilter2D(a, -1, kernel, kernel, borderType=cv2.BORDER_REFLECT)

    def one_self(k: int) -> None:
        # The guide is the image (the default): ximgproc.guidedFilter does not specialise that case and
        # runs six box filters where four suffice (cov(I, p) = var(I), mean(p) = mean(I)). This is its
        # algorithm with its border rule (BORDER_REFLECT), every step an OpenCV/numpy call on one
        # image that stays in cache.
        x = arr[k]
        mean = box(x)
        tmp = np.multiply(x, x)
        var = box(tmp)
        np.multiply(mean, mean, out=tmp)
        var -= tmp  # var(I) per window
        np.divide(var, var + np.float32(eps_of(x)), out=var)  # a = var / (var + ε)
        np.subtract(np.float32(1.0), var, out=tmp)
        mean *= tmp  # b = (1 − a)·mean
        np.multiply(box(var), x, out=out[k])
        out[k] += box(mean)

    for_each_image(one_self if guide is None else one, len(arr), threads, arr.shape[-2] * arr.shape[-1])
    return out


@dataclass
class Guided(Op):
    """Chainable :func:`guided_filter`; ``guide`` is ``"self"`` or the key of an earlier step."""

    radius: int = 2
    eps: float = 0.2
    guide: str = "self"
    step = "guided"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.radius < 1 or not self.eps > 0:
            raise ValueError(f"radius must be ≥ 1 px and eps > 0, got {self.radius}, {self.eps}")

    def check(self, source: ParticleSource) -> None:
        if self.guide not in ("self", "input") and self.guide not in [op.key for op in source.ops]:
            raise BadInputError(f"the guided step's guide '{self.guide}' is not an earlier step")

    def apply(self, images: np.ndarray, ctx: BatchContext) -> np.ndarray:
        guide = None if self.guide == "self" else ctx.outputs[self.guide]
        return guided_filter(images, self.radius, self.eps, guide)
