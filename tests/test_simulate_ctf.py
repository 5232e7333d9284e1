"""The simulator's CTF is RELION's CTF: sign, defocus units, astigmatism direction, amplitude contrast."""

from __future__ import annotations

import numpy as np
import pytest

from cryomap.core.ctf import ctf_2d, normalise_defocus
from cryomap.core.ctf_params import CtfParams, ctf_grid, ctf_phase_coefficients, electron_wavelength_A


def _relion_ctf(u: float, v: float, angle_deg: float, n: int, apix: float, voltage: float = 300.0,
                cs_mm: float = 2.7, w: float = 0.1) -> np.ndarray:
    """RELION's ``CTF::getCTF`` written out: defocus U along ``rlnDefocusAngle`` from the x (column) axis,
    CTF = sin(π λ Δf s² − π/2 Cs λ³ s⁴ + atan(w / √(1 − w²))), positive at low frequency."""
    volts = voltage * 1e3
    lam = 12.2643247 / np.sqrt(volts * (1 + volts * 0.978466e-6))  # Å, RELION's formula
    fy = np.fft.fftfreq(n)[:, None] / apix
    fx = np.fft.fftfreq(n)[None, :] / apix
    s2 = fx**2 + fy**2
    theta = np.arctan2(fy, fx)
    defocus = (u + v) / 2 + (u - v) / 2 * np.cos(2 * (theta - np.deg2rad(angle_deg)))
    chi = np.pi * lam * defocus * s2 - np.pi / 2 * cs_mm * 1e7 * lam**3 * s2**2
    return np.sin(chi + np.arctan(w / np.sqrt(1 - w * w)))


@pytest.mark.parametrize("u, v, angle", [(15000.0, 15000.0, 0.0), (20000.0, 12000.0, 30.0), (9000.0, 8000.0, -75.0)])
def test_ctf_equals_relions_formula(u, v, angle):
    n, apix = 128, 1.2
    ours = ctf_2d(u, v, angle, voltage=300.0, cs=2.7, amplitude_contrast=0.1, apix=apix, shape=(n, n), rfft=False)
    ours = ours[0].numpy()
    assert ours[0, 0] == pytest.approx(0.1, abs=1e-6)  # RELION sign: + amplitude contrast at DC
    np.testing.assert_allclose(ours, _relion_ctf(u, v, angle, n, apix), atol=2e-3)
    if u != v:  # the astigmatism direction is not mirrored (90° − angle would be a y-flip of the image)
        mirrored = _relion_ctf(u, v, 90.0 - angle, n, apix)
        assert np.abs(ours - mirrored).max() > 0.5


def test_defocus_order_and_angle_wrap():
    u, v, a = normalise_defocus(np.array([10000.0, 12000.0]), np.array([12000.0, 10000.0]), np.array([170.0, 20.0]))
    np.testing.assert_allclose(u, [12000.0, 12000.0])
    np.testing.assert_allclose(v, [10000.0, 10000.0])
    np.testing.assert_allclose(a, [-100.0, 20.0])  # swapping U and V turns the axis by 90°
    # the swapped parameters describe the same CTF
    n, apix = 64, 1.5
    a_ = ctf_2d(10000.0, 12000.0, 170.0, voltage=300, cs=2.7, amplitude_contrast=0.1, apix=apix, shape=(n, n))
    b_ = ctf_2d(12000.0, 10000.0, -100.0, voltage=300, cs=2.7, amplitude_contrast=0.1, apix=apix, shape=(n, n))
    np.testing.assert_allclose(a_.numpy(), b_.numpy(), atol=1e-5)


@pytest.mark.parametrize("shape, rfft", [((64, 64), True), ((63, 48), True), ((50, 65), False)])
def test_numpy_ctf_formula_is_torch_ctfs(shape, rfft):
    """The torch-free formula (phase flipping at extraction) renders torch-ctf's CTF: astigmatism at any
    angle, a phase shift, U < V swapped, rectangular and odd grids; and the same electron wavelength."""
    from torch_ctf import calculate_relativistic_electron_wavelength

    for kv in (100.0, 200.0, 300.0):
        assert electron_wavelength_A(kv) == pytest.approx(float(calculate_relativistic_electron_wavelength(kv * 1e3)) * 1e10,
                                                          rel=1e-6)
    assert electron_wavelength_A(300.0) == pytest.approx(0.019687, abs=1e-6)  # 300 kV: 1.9687 pm
    params = CtfParams(np.array([18000.0, 9000.0, 15000.0]), np.array([14000.0, 11000.0, 15000.0]),
                       np.array([37.0, -120.0, 0.0]), 300.0, 2.7, 0.07, 0.0, np.array([0.0, 45.0, 90.0]))
    coef, quartic = ctf_phase_coefficients(params)
    ours = np.stack([ctf_grid(c, quartic, 1.1, shape, rfft=rfft) for c in coef])
    ref = ctf_2d(params.defocus_u, params.defocus_v, params.angle, voltage=300.0, cs=2.7, amplitude_contrast=0.07,
                 apix=1.1, shape=shape, phase_shift=params.phase_shift, rfft=rfft).numpy()
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, atol=5e-4)  # torch-ctf renders in float32
    assert np.abs(ours[0] - ours[1]).max() > 1.0  # and the particles' CTFs differ (the test can fail)
