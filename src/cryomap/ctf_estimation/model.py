"""The shared CTF (:mod:`cryomap.core.ctf`, torch-ctf) on a fixed set of frequencies, for fast repeated fits.

A fit evaluates the CTF thousands of times on the same pixels; :func:`cryomap.core.ctf.ctf_2d`
rebuilds torch-ctf's frequency grid on every call (about 60 ms for a 400² half-plane on this
machine, against under 1 ms here), so this module takes torch-ctf's phase apart once per grid
and reuses it. No formula is written here: torch-ctf's total phase is linear in defocus and in
the extra phase shift, so

    χ(k) = α(k) · Δf(k) + β(k) + γ(k) · φ,   CTF(k) = −sin χ(k),
    Δf(k) = (U + V)/2 + a cos 2θ + b sin 2θ,   a = (U − V)/2 · cos 2A, b = (U − V)/2 · sin 2A,

with α, β, γ taken from ``torch_ctf.ctf_utils.calculate_total_phase_shift`` at defocus 0 and
1 µm and phase shift 0° and 1°, θ the angle of the frequency from the x axis toward y and A the
RELION defocus angle (RELION's astigmatism). :func:`check_against_core` compares the result with
``ctf_2d`` pixel for pixel and the estimator calls it before fitting, so a change of convention
in torch-ctf stops the estimator rather than skewing it.

Units: defocus Å (positive underfocus), angles degrees, frequencies 1/Å.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Optics:
    """Microscope and detector: voltage kV, spherical aberration mm, amplitude contrast (fraction), pixel size Å/px."""

    voltage: float
    cs: float
    amplitude_contrast: float
    apix: float


def phase_terms(s2: torch.Tensor, optics: Optics) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """torch-ctf's phase at squared frequencies ``s2`` (1/Å²) split as (α per Å of defocus, β, γ per degree of phase shift)."""
    from torch_ctf.ctf_utils import calculate_total_phase_shift

    s2 = torch.as_tensor(s2, dtype=torch.float64)

    def chi(defocus_um: float, phase_deg: float) -> torch.Tensor:
        t = lambda v: torch.tensor(float(v), dtype=torch.float64)  # noqa: E731
        return calculate_total_phase_shift(defocus_um=t(defocus_um), voltage_kv=t(optics.voltage),
                                           spherical_aberration_mm=t(optics.cs), phase_shift_degrees=t(phase_deg),
                                           amplitude_contrast_fraction=t(optics.amplitude_contrast),
                                           fftfreq_grid_angstrom_squared=s2)

    beta = chi(0.0, 0.0)
    alpha = (chi(1.0, 0.0) - beta) / 1e4  # per Å
    gamma = chi(0.0, 1.0) - beta  # per degree
    return alpha, beta, gamma


class CtfGrid:
    """The squared CTF of the shared model at fixed frequencies: |s|² (1/Å²) and direction θ (radians) per sample.

    ``phase(mean, a, b, phase_shift)`` takes (K,) arrays of parameters (Å, Å, Å, degrees; see the
    module docstring) and returns (K, n) phases; ``ctf2`` their sin².
    """

    def __init__(self, s: torch.Tensor, theta: torch.Tensor | None, optics: Optics, dtype=torch.float32):
        s = torch.as_tensor(s, dtype=torch.float64).reshape(-1)
        alpha, beta, gamma = phase_terms(s**2, optics)
        self.n = s.numel()
        self.dtype = dtype
        self.alpha, self.beta, self.gamma = alpha.to(dtype), beta.to(dtype), gamma.to(dtype)
        if theta is None:
            self.cos2 = self.sin2 = None
        else:
            theta = torch.as_tensor(theta, dtype=torch.float64).reshape(-1)
            self.cos2, self.sin2 = torch.cos(2 * theta).to(dtype), torch.sin(2 * theta).to(dtype)

    def phase(self, mean, a=0.0, b=0.0, phase_shift=0.0) -> torch.Tensor:
        t = lambda v: torch.as_tensor(np.atleast_1d(np.asarray(v, dtype=np.float64)), dtype=self.dtype)[:, None]  # noqa: E731
        mean, a, b, ps = t(mean), t(a), t(b), t(phase_shift)
        defocus = mean
        if self.cos2 is not None:
            defocus = mean + a * self.cos2 + b * self.sin2
        return self.alpha * defocus + self.beta + self.gamma * ps

    def ctf(self, mean, a=0.0, b=0.0, phase_shift=0.0) -> torch.Tensor:
        """CTF values (K, n), RELION sign (−sin χ as torch-ctf)."""
        return -torch.sin(self.phase(mean, a, b, phase_shift))

    def ctf2(self, mean, a=0.0, b=0.0, phase_shift=0.0) -> torch.Tensor:
        """Squared CTF (K, n): what a power spectrum shows."""
        return torch.sin(self.phase(mean, a, b, phase_shift)).square_()


def astig_to_uva(mean: float, a: float, b: float) -> tuple[float, float, float]:
    """(mean defocus, a, b) Å → RELION (DefocusU, DefocusV, DefocusAngle) with U ≥ V, angle in [-90, 90)° ."""
    half = float(np.hypot(a, b))
    angle = 0.5 * float(np.degrees(np.arctan2(b, a)))
    angle = (angle + 90.0) % 180.0 - 90.0
    return mean + half, mean - half, angle


def uva_to_astig(u: float, v: float, angle: float) -> tuple[float, float, float]:
    """RELION (DefocusU, DefocusV Å, DefocusAngle °) → (mean, a, b) Å."""
    half = (u - v) / 2.0
    return (u + v) / 2.0, half * float(np.cos(np.radians(2 * angle))), half * float(np.sin(np.radians(2 * angle)))


@functools.lru_cache(maxsize=16)
def check_against_core(optics: Optics) -> float:
    """Largest difference between :class:`CtfGrid` and :func:`cryomap.core.ctf.ctf_2d` on a 64² grid; raises if above 1e-3."""
    from cryomap.core.ctf import ctf_2d
    from cryomap.ctf_estimation.power_spectrum import frequency_grid

    n = 64
    u, v, angle, ps = 16000.0, 14500.0, 33.0, 25.0
    ref = ctf_2d(u, v, angle, voltage=optics.voltage, cs=optics.cs, amplitude_contrast=optics.amplitude_contrast,
                 apix=optics.apix, shape=(n, n), phase_shift=ps)[0].reshape(-1).to(torch.float64)
    s, theta = frequency_grid(n, optics.apix)
    grid = CtfGrid(s, theta, optics, dtype=torch.float64)
    mean, a, b = uva_to_astig(u, v, angle)
    ours = grid.ctf(mean, a, b, ps)[0]
    err = float((ours - ref).abs().max())
    if err > 1e-3:
        raise RuntimeError(f"the CTF estimator's fast CTF differs from cryomap.core.ctf.ctf_2d by {err:.3g}; "
                           "torch-ctf's conventions changed")
    return err
