"""Blend of original and denoised particles: ``w·D + (1 − w)·O``.

The method report keeps a particle's features by averaging the original with its denoised
version: weight ½ gives (D + O)/2, weight ⅔ gives (2D + O)/3 (its two figures). In a chain the
denoised image is the output of the step ``denoised`` (default ``"denoise"``) and the original is
what went *into* that step (``original=None``), or any earlier step's output by key (``"input"``
is the particle as read).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cryomap.errors import BadInputError
from cryomap.particles.source import BatchContext, ParticleSource
from cryomap.preprocess.base import Op


def blend(original: np.ndarray, denoised: np.ndarray, weight: float) -> np.ndarray:
    """``weight · denoised + (1 − weight) · original`` (float32), ``weight`` in [0, 1]."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"blend weight must lie in [0, 1], got {weight}")
    o = np.asarray(original, dtype=np.float32)
    d = np.asarray(denoised, dtype=np.float32)
    if o.shape != d.shape:
        raise ValueError(f"original {o.shape} and denoised {d.shape} differ in shape")
    w = np.float32(weight)
    return w * d + (np.float32(1.0) - w) * o


@dataclass
class Blend(Op):
    """Chainable :func:`blend` of step ``denoised``'s output with ``original`` (default: that step's input)."""

    weight: float = 0.5
    denoised: str = "denoise"
    original: str | None = None
    step = "blend"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.weight <= 1.0:
            raise ValueError(f"blend weight must lie in [0, 1], got {self.weight}")

    def check(self, source: ParticleSource) -> None:
        keys = [op.key for op in source.ops]
        if self.denoised not in keys:
            raise BadInputError(f"the blend step needs a '{self.denoised}' step before it (steps so far: "
                                f"{', '.join(keys) or 'none'})")
        if self.original is not None and self.original != "input" and self.original not in keys:
            raise BadInputError(f"the blend step's original '{self.original}' is not an earlier step")

    def apply(self, images: np.ndarray, ctx: BatchContext) -> np.ndarray:
        keys = list(ctx.outputs)
        d = ctx.outputs[self.denoised]
        o_key = self.original if self.original is not None else keys[keys.index(self.denoised) - 1]
        return blend(ctx.outputs[o_key], d, self.weight)
