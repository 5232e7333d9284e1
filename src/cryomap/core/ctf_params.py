"""CTF parameters and the CTF formula in numpy: what a CTF needs without torch.

RELION units throughout: ``defocus_u/v`` Å (positive = underfocus, U ≥ V after
:func:`normalise_defocus`), ``angle`` degrees from the image x axis to the U direction, voltage
kV, Cs mm, amplitude contrast as a fraction, phase shift degrees (phase plates), B-factor Å²
(envelope ``exp(−B s² / 4)``), frequencies in cycles/Å. The sign is RELION's: positive at low
frequency.

:func:`ctf_params_from_table` is the one place a CTF is read from a particle table (RELION column
names, as :mod:`cryomap.io.star` and :mod:`cryomap.io.cs` deliver them). :mod:`cryomap.core.ctf`
re-exports everything here and renders CTFs with torch-ctf; this module exists so that stages
that only need parameters or the sign of a CTF (extraction with ``--phase-flip``,
:mod:`cryomap.core.phase_flip`) do not import torch, which costs ~2 s and ~220 MiB resident per
process — more than the whole extraction of 6,000 particles of 128 px.

The formula (:func:`ctf_phase`) is torch-ctf's, written out: ``sin(χ)`` with
``χ = π λ Δf(φ) s² − (π/2) Cs λ³ s⁴ + phase shift + arctan(A/√(1−A²))`` and the astigmatic
defocus ``Δf(φ) = mean + astig·cos 2(φ − angle)``; tests/test_simulate_ctf.py checks it against
torch-ctf's ``calculate_ctf_2d`` and the wavelength against its
``calculate_relativistic_electron_wavelength``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

#: Planck constant (J s), electron rest mass (kg), elementary charge (C), speed of light (m/s): CODATA 2018
_H, _M0, _E, _C = 6.62607015e-34, 9.1093837015e-31, 1.602176634e-19, 299792458.0


@dataclass
class CtfParams:
    """Per-particle CTF parameters (arrays of length N, or scalars), RELION units."""

    defocus_u: np.ndarray  # Å
    defocus_v: np.ndarray  # Å
    angle: np.ndarray  # degrees
    voltage: float = 300.0  # kV
    cs: float = 2.7  # mm
    amplitude_contrast: float = 0.1
    bfactor: float = 0.0  # Å²
    phase_shift: np.ndarray | float = 0.0  # degrees (per particle or one value)

    def __len__(self) -> int:
        return int(np.atleast_1d(self.defocus_u).shape[0])

    def as_dict(self) -> dict:
        return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in asdict(self).items()}


def normalise_defocus(u: np.ndarray, v: np.ndarray, angle: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Order defoci so U ≥ V (swapping turns the astigmatism axis by 90°), angle wrapped to [-180, 180)."""
    u, v, angle = (np.asarray(a, dtype=np.float64) for a in np.broadcast_arrays(u, v, angle))
    swap = v > u
    u2, v2 = np.where(swap, v, u), np.where(swap, u, v)
    a2 = np.where(swap, angle + 90.0, angle)
    return u2, v2, (a2 + 180.0) % 360.0 - 180.0


#: RELION columns a CTF needs at least (the rest have RELION's defaults when absent).
CTF_REQUIRED_COLUMNS = ("rlnDefocusU", "rlnVoltage", "rlnSphericalAberration")


def missing_ctf_columns(columns) -> list[str]:
    """The required CTF columns (:data:`CTF_REQUIRED_COLUMNS`) a table lacks."""
    return [c for c in CTF_REQUIRED_COLUMNS if c not in set(columns)]


def ctf_params_from_table(table, bfactor: float | None = None) -> CtfParams:
    """:class:`CtfParams` from a flat RELION particle table (optics merged, as ``read_star`` gives it).

    ``rlnDefocusU`` (Å), ``rlnVoltage`` (kV) and ``rlnSphericalAberration`` (mm) are required
    (``KeyError`` naming them otherwise); ``rlnDefocusV`` defaults to U, ``rlnDefocusAngle`` and
    ``rlnPhaseShift`` to 0°, ``rlnAmplitudeContrast`` to 0.1 and ``rlnCtfBfactor`` to 0 Å² (the
    mean when it varies, as the envelope is applied per batch). Voltage, Cs and amplitude contrast
    are taken from the first row: they are optics-group constants.
    """
    missing = missing_ctf_columns(table.columns)
    if missing:
        raise KeyError(f"the particle table lacks CTF columns {', '.join(missing)}")

    def col(name: str, default: float | None = None) -> np.ndarray:
        if name in table:
            return np.asarray(table[name], dtype=np.float64)
        return np.full(len(table), float(default))

    u = col("rlnDefocusU")
    b = bfactor if bfactor is not None else (float(np.mean(col("rlnCtfBfactor"))) if "rlnCtfBfactor" in table else 0.0)
    return CtfParams(
        defocus_u=u,
        defocus_v=col("rlnDefocusV") if "rlnDefocusV" in table else u.copy(),
        angle=col("rlnDefocusAngle", 0.0),
        voltage=float(col("rlnVoltage")[0]),
        cs=float(col("rlnSphericalAberration")[0]),
        amplitude_contrast=float(col("rlnAmplitudeContrast", 0.1)[0]),
        bfactor=b,
        phase_shift=col("rlnPhaseShift", 0.0),
    )


def subset(params: CtfParams, index: np.ndarray | slice) -> CtfParams:
    """The CTF parameters of a subset of particles."""
    ps = np.atleast_1d(np.asarray(params.phase_shift, dtype=np.float64))
    return CtfParams(np.atleast_1d(params.defocus_u)[index], np.atleast_1d(params.defocus_v)[index],
                     np.atleast_1d(params.angle)[index], params.voltage, params.cs, params.amplitude_contrast,
                     params.bfactor, ps if ps.size == 1 else ps[index])


def unique_ctfs(params: "CtfParams") -> tuple["CtfParams", np.ndarray]:
    """The distinct per-particle CTFs of ``params`` and, per particle, the index of its own among them."""
    n = len(params)
    cols = np.stack([np.broadcast_to(np.atleast_1d(np.asarray(v, dtype=np.float64)), (n,))
                     for v in (params.defocus_u, params.defocus_v, params.angle, params.phase_shift)], axis=1)
    rows, first, index = np.unique(cols, axis=0, return_index=True, return_inverse=True)
    return subset(params, first), index.reshape(-1)


def electron_wavelength_A(voltage_kv: float) -> float:
    """Relativistic electron wavelength (Å) at an acceleration voltage (kV): ``h / √(2 m₀ e V (1 + e V / 2 m₀ c²))``."""
    v = float(voltage_kv) * 1e3
    return _H / np.sqrt(2.0 * _M0 * _E * v * (1.0 + _E * v / (2.0 * _M0 * _C**2))) * 1e10


def ctf_phase_coefficients(params: CtfParams) -> tuple[np.ndarray, float]:
    """Per-particle coefficients of the CTF phase: ``χ = coef · (s², fx² − fy², 2·fx·fy, 1) − quartic · s⁴``.

    Returns ``coef`` (N, 4) float64 and ``quartic`` = (π/2) Cs λ³ (Å² units with frequencies in
    cycles/Å). ``cos 2(φ − θ)·s² = (fx² − fy²)·cos 2θ + 2·fx·fy·sin 2θ``, so the astigmatic phase
    is linear in four per-frequency terms; particles with equal rows have equal CTFs.
    """
    u, v, a = normalise_defocus(np.atleast_1d(params.defocus_u), np.atleast_1d(params.defocus_v),
                                np.atleast_1d(params.angle))
    n = len(u)
    ps = np.broadcast_to(np.atleast_1d(np.asarray(params.phase_shift, dtype=np.float64)), (n,))
    lam = electron_wavelength_A(float(params.voltage))
    w = float(params.amplitude_contrast)
    mean, astig, ang = (u + v) / 2.0, (u - v) / 2.0, np.deg2rad(a)
    coef = np.stack([np.pi * lam * mean, np.pi * lam * astig * np.cos(2 * ang), np.pi * lam * astig * np.sin(2 * ang),
                     np.deg2rad(ps) + np.arctan(w / np.sqrt(1.0 - w * w))], 1)
    return coef, float(np.pi / 2.0 * float(params.cs) * 1e7 * lam**3)


def ctf_phase(coef: np.ndarray, quartic: float, fx: np.ndarray, fy: np.ndarray) -> np.ndarray:
    """χ (float64) of one particle's ``coef`` (4,) at frequencies ``fx``, ``fy`` (cycles/Å, broadcastable)."""
    s2 = fx * fx + fy * fy
    return coef[0] * s2 + coef[1] * (fx * fx - fy * fy) + coef[2] * (2.0 * fx * fy) + coef[3] - quartic * s2 * s2


def ctf_grid(coef: np.ndarray, quartic: float, apix: float, shape: tuple[int, int], rfft: bool = True) -> np.ndarray:
    """One particle's CTF (without B-factor) on the DFT grid of a ``shape`` image at ``apix`` Å/px, DC at [0, 0].

    (h, w//2 + 1) with ``rfft`` (the columns ``numpy.fft.rfft2`` keeps), else (h, w); float64.
    """
    h, w = shape
    fy = np.fft.fftfreq(h)[:, None] / apix
    fx = (np.fft.rfftfreq(w) if rfft else np.fft.fftfreq(w))[None, :] / apix
    return np.sin(ctf_phase(coef, quartic, fx, fy))
