"""Per-image standardisation as a chainable op: mean 0, standard deviation 1.

``region="box"`` (default, the method report's step: "subtract the mean, divide by the std") takes
the statistics over the whole box; ``region="ring"`` over the background ring outside
``bg_radius`` px (RELION's normalisation; default radius 75 % of the box half-width, as extraction
uses). The kernel is the shared :func:`cryomap.core.images.standardize_images`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from cryomap.core.images import standardize_images
from cryomap.particles.source import BatchContext
from cryomap.preprocess.base import Op

#: Background radius as a fraction of the box half-width when ``region="ring"`` gives none.
DEFAULT_RING_FRACTION = 0.75


def standardize(images: np.ndarray, region: Literal["box", "ring"] = "box", bg_radius: float | None = None) -> np.ndarray:
    """Standardise each image (N, H, W) over the whole box or the background ring (``bg_radius`` px)."""
    if region not in ("box", "ring"):
        raise ValueError(f"region must be 'box' or 'ring', got {region!r}")
    if region == "box":
        return standardize_images(images)
    radius = DEFAULT_RING_FRACTION * np.asarray(images).shape[-1] / 2 if bg_radius is None else bg_radius
    return standardize_images(images, radius)


@dataclass
class Standardize(Op):
    """Chainable :func:`standardize`."""

    region: Literal["box", "ring"] = "box"
    bg_radius: float | None = None
    step = "standardize"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.region not in ("box", "ring"):
            raise ValueError(f"region must be 'box' or 'ring', got {self.region!r}")
        if self.bg_radius is not None and not self.bg_radius > 0:
            raise ValueError(f"bg_radius must be a positive number of pixels, got {self.bg_radius}")

    def apply(self, images: np.ndarray, ctx: BatchContext) -> np.ndarray:
        return standardize(images, self.region, self.bg_radius)
