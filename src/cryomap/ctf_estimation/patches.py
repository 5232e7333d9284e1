"""Per-patch defocus smoothed over the micrograph (cryoSPARC's Patch CTF idea), so each particle gets its own.

The micrograph is cut into an ``ny × nx`` grid of patches; each patch's spectrum is the average of
the tiles whose centre lies in it (:func:`cryomap.ctf_estimation.power_spectrum.average_spectra`).
With the micrograph's astigmatism (U − V and angle) and phase shift held, each patch's mean
defocus is found by the 1D search of :mod:`cryomap.ctf_estimation.fit` on the patch's equiphase
average (rings of the whole-micrograph fit lined up), ±``search`` Å around the micrograph's
defocus. A low-order polynomial in the pixel coordinates (a plane by default: a tilted or wedged
specimen) is then fitted to the patch defoci, weighted by each patch's score, dropping patches
more than 3 robust standard deviations off it. A particle at (x, y) px gets

    DefocusU/V = model(x, y) ± (U − V)/2 of the micrograph,  DefocusAngle = the micrograph's.

The model is written as ``rlnCryomapDefocusModel``: comma-separated coefficients (Å, Å/px, Å/px²)
of the terms ``1, x, y`` (degree 1) or ``1, x, y, x², xy, y²`` (degree 2), x = column and y = row
in pixels of the micrograph, for the mean defocus (U + V)/2.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from cryomap.ctf_estimation.fit import CtfFit, SpectrumFitter, ls_scores, parabolic_peak
from cryomap.ctf_estimation.power_spectrum import Spectra, crop_spectrum, radial_profile

#: Polynomial terms by degree (exponents of x and y).
TERMS = {0: [(0, 0)], 1: [(0, 0), (1, 0), (0, 1)], 2: [(0, 0), (1, 0), (0, 1), (2, 0), (1, 1), (0, 2)]}


@dataclass
class DefocusModel:
    """Mean defocus (Å) as a polynomial of pixel coordinates, plus the micrograph's astigmatism and angle."""

    coefficients: np.ndarray  # Å·px⁻ᵏ, in TERMS[degree] order
    degree: int
    half_astigmatism: float  # (U − V) / 2, Å
    angle: float  # degrees

    def mean_defocus(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """(U + V)/2 in Å at pixel (x = column, y = row)."""
        x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        return sum(c * x**i * y**j for c, (i, j) in zip(self.coefficients, TERMS[self.degree]))

    def ctf_at(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(DefocusU, DefocusV, DefocusAngle) per particle at pixel coordinates."""
        m = self.mean_defocus(x, y)
        return m + self.half_astigmatism, m - self.half_astigmatism, np.full(np.shape(m), self.angle)

    def to_string(self) -> str:
        return ",".join(f"{c:.10g}" for c in self.coefficients)

    @classmethod
    def from_string(cls, text: str, half_astigmatism: float, angle: float) -> "DefocusModel":
        coef = np.array([float(t) for t in str(text).split(",") if t.strip()])
        degree = {1: 0, 3: 1, 6: 2}.get(len(coef))
        if degree is None:
            raise ValueError(f"a defocus model has 1, 3 or 6 coefficients, got {len(coef)}")
        return cls(coef, degree, half_astigmatism, angle)


@dataclass
class PatchResult:
    """Per-patch fits (``table``: centres px, patch defocus Å, score, smoothed defocus Å, used) and the smooth model."""

    table: pd.DataFrame
    model: DefocusModel


def _design(x: np.ndarray, y: np.ndarray, degree: int, centre: tuple[float, float], scale: float) -> np.ndarray:
    xn, yn = (np.asarray(x, float) - centre[0]) / scale, (np.asarray(y, float) - centre[1]) / scale
    return np.column_stack([xn**i * yn**j for i, j in TERMS[degree]])


def fit_surface(x: np.ndarray, y: np.ndarray, d: np.ndarray, weights: np.ndarray, degree: int,
                shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Weighted robust polynomial fit of defocus ``d`` (Å) at (x, y) px; returns (raw-pixel coefficients, used mask).

    Solved in coordinates centred and scaled to the micrograph (well conditioned), then expressed
    exactly in raw pixel coordinates. The degree drops when too few patches remain for it.
    """
    rows, cols = shape
    centre, scale = ((cols - 1) / 2.0, (rows - 1) / 2.0), max(rows, cols) / 2.0
    used = weights > 0
    while degree > 0 and used.sum() < len(TERMS[degree]) + 1:
        degree -= 1
    coef_n = np.zeros(len(TERMS[degree]))
    for _ in range(4):
        A = _design(x, y, degree, centre, scale)
        sw = np.sqrt(np.where(used, weights, 0.0))
        coef_n = np.linalg.lstsq(A * sw[:, None], d * sw, rcond=None)[0]
        res = np.abs(d - A @ coef_n)
        spread = 1.4826 * np.median(res[used]) if used.any() else 0.0
        new = (weights > 0) & (res <= max(3.0 * spread, 30.0))
        if new.sum() < len(TERMS[degree]) + 1 or (new == used).all():
            break
        used = new
    # the same polynomial in raw pixel coordinates (exact for a polynomial; columns scaled for conditioning)
    gx, gy = np.meshgrid(np.linspace(0, cols - 1, 4), np.linspace(0, rows - 1, 4))
    gx, gy = gx.ravel(), gy.ravel()
    values = _design(gx, gy, degree, centre, scale) @ coef_n
    raw = np.column_stack([gx**i * gy**j for i, j in TERMS[degree]])
    colscale = np.abs(raw).max(0)
    coef = np.linalg.lstsq(raw / colscale, values, rcond=None)[0] / colscale
    return coef, used


def fit_patches(fitter: SpectrumFitter, fit: CtfFit, spectra: Spectra, degree: int = 1,
                search: float | None = None) -> PatchResult:
    """Fit each patch's mean defocus around the micrograph's ``fit`` and smooth them with a polynomial of ``degree``.

    ``search`` Å: half-width of the per-patch search (default max(1500 Å, 10 % of the defocus)).
    """
    if spectra.patches is None:
        raise ValueError("the spectra were computed without patches")
    ctx = fit._context
    mean, a, b, ps = ctx["mean"], ctx["a"], ctx["b"], ctx["ps"]
    search = float(search) if search is not None else max(1500.0, 0.1 * mean)
    bins = torch.round(fitter.epa_bins(mean, a, b, ps, fitter.s_crop, fitter.theta_crop)).long()
    mask = fitter.mask_crop
    n_bins = fitter.k_hi + 1
    pn = crop_spectrum(spectra.patches, fitter.crop) / fitter.b0(fitter.s_crop)
    prof, counts = radial_profile(pn, bins, n_bins, mask=mask)
    y = prof[:, fitter.k_lo:]
    w = counts[fitter.k_lo:]
    step = fitter.step / 2.0
    cands = mean + np.arange(-search, search + step / 2, step)
    cands = cands[cands > 0]
    c2 = fitter.grid_band.ctf2(cands, phase_shift=ps)
    scores = ls_scores(y, w, c2, fitter.basis_band).numpy()  # (P, K)
    best = scores.argmax(1)
    d = np.array([cands[k] + parabolic_peak(scores[p], k) * step for p, k in enumerate(best)])
    score = scores[np.arange(len(best)), best]
    edge = (best <= 1) | (best >= len(cands) - 2)
    weights = np.where(edge, 0.0, np.clip(score, 0.0, None))
    centres = spectra.patch_centres
    coef, used = fit_surface(centres[:, 0], centres[:, 1], d, weights, degree, spectra.shape)
    model_degree = {1: 0, 3: 1, 6: 2}[len(coef)]
    half = fit.astigmatism / 2.0
    model = DefocusModel(coef, model_degree, half, fit.angle)
    smoothed = model.mean_defocus(centres[:, 0], centres[:, 1])
    table = pd.DataFrame({
        "rlnCoordinateX": centres[:, 0], "rlnCoordinateY": centres[:, 1],
        "rlnCryomapPatchTiles": spectra.patch_tiles.astype(np.int64),
        "rlnDefocusU": d + half, "rlnDefocusV": d - half, "rlnDefocusAngle": fit.angle,
        "rlnCtfFigureOfMerit": score, "rlnCryomapDefocusSmoothed": smoothed,
        "rlnCryomapPatchUsed": used.astype(np.int64),
    })
    return PatchResult(table, model)
