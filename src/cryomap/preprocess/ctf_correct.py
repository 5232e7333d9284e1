"""CTF correction of particle images from each particle's own CTF: phase flipping and Wiener filtering.

Images are taken as RELION stores extracted particles (contrast-inverted, so the molecule is bright
and ``image = CTF ⊛ projection`` with RELION's CTF sign, positive at low frequency). The CTF of every
image comes from its row (defocus U/V Å, astigmatism angle °, voltage kV, Cs mm, amplitude contrast,
phase shift °, pixel size Å/px): torch-ctf's formula, rendered by torch-ctf for the Wiener filter
(:func:`cryomap.core.ctf.ctf_images`) and by its numpy twin for the phase flip
(:mod:`cryomap.core.phase_flip`, which needs no torch).

* :func:`phase_flip` multiplies each Fourier coefficient by the sign of the CTF: the image's
  spectrum then has the sign of the projection's everywhere the CTF is non-zero (amplitudes are
  left as the CTF made them). The STAR gets ``rlnCtfDataArePhaseFlipped = 1``, as RELION marks
  phase-flipped particles (a reconstruction must then use |CTF|).
* :func:`wiener` divides by the CTF with a Wiener constant: ``F · CTF / (CTF² + c)``; ``c`` is
  the inverse of the assumed spectral SNR (0.1 by default: strong correction, as the report's
  CryoSegNet chain does). The STAR gets ``rlnCryomapCtfCorrected = wiener`` (RELION keeps labels it
  does not know); such particles should not be CTF-corrected again.

The filtering is done on the box as it is (no padding), as cryoSPARC, ASPIRE and cryoDRGN do for
particles: the CTF's delocalisation beyond the box is lost either way once a particle is cut.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from cryomap.core.ctf import CtfParams, phase_flip_images, wiener_images
from cryomap.errors import BadInputError
from cryomap.particles.source import BatchContext, ParticleSource
from cryomap.preprocess.base import Op

#: Wiener constant used when none is given (inverse spectral SNR).
DEFAULT_WIENER_CONSTANT = 0.1


def phase_flip(images: np.ndarray, ctf: CtfParams, apix: float) -> np.ndarray:
    """Phase-flip images (N, H, W) by the sign of their CTFs (``ctf`` per image, ``apix`` Å/px)."""
    return phase_flip_images(images, ctf, apix)


def wiener(images: np.ndarray, ctf: CtfParams, apix: float, constant: float = DEFAULT_WIENER_CONSTANT) -> np.ndarray:
    """Wiener-filter images (N, H, W): ``F · CTF / (CTF² + constant)`` (``constant`` > 0, inverse SNR)."""
    return wiener_images(images, ctf, apix, constant)


def _check_ctf(source: ParticleSource, step: str) -> None:
    source.require_ctf(f"the {step} step")
    if "rlnCtfDataArePhaseFlipped" in source.table and (source.table["rlnCtfDataArePhaseFlipped"] == 1).any():
        raise BadInputError(f"the {step} step: these particles are already phase-flipped (rlnCtfDataArePhaseFlipped = 1)",
                            source.path)
    if "rlnCryomapCtfCorrected" in source.table:
        raise BadInputError(f"the {step} step: these particles are already CTF-corrected (rlnCryomapCtfCorrected)",
                            source.path)


@dataclass
class PhaseFlip(Op):
    """Chainable :func:`phase_flip`; sets ``rlnCtfDataArePhaseFlipped = 1``."""

    step = "phase-flip"

    def apply(self, images: np.ndarray, ctx: BatchContext) -> np.ndarray:
        return phase_flip(images, ctx.ctf(), ctx.apix)

    def check(self, source: ParticleSource) -> None:
        _check_ctf(source, self.step)

    def update_table(self, table: pd.DataFrame) -> pd.DataFrame:
        return table.assign(rlnCtfDataArePhaseFlipped=1)


@dataclass
class Wiener(Op):
    """Chainable :func:`wiener`; sets ``rlnCryomapCtfCorrected = wiener``."""

    constant: float = DEFAULT_WIENER_CONSTANT
    step = "wiener"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.constant > 0:
            raise ValueError(f"the Wiener constant must be positive, got {self.constant}")

    def apply(self, images: np.ndarray, ctx: BatchContext) -> np.ndarray:
        return wiener(images, ctx.ctf(), ctx.apix, self.constant)

    def check(self, source: ParticleSource) -> None:
        _check_ctf(source, self.step)

    def update_table(self, table: pd.DataFrame) -> pd.DataFrame:
        return table.assign(rlnCryomapCtfCorrected="wiener")
