"""The contrast transfer function every stage shares: RELION parameters in, torch-ctf inside.

RELION units in, torch-ctf units inside: ``defocus_u/v`` Å (positive = underfocus, U ≥ V after
:func:`normalise_defocus`), ``angle`` degrees from the image x axis to the U direction, voltage
kV, Cs mm, amplitude contrast as a fraction, phase shift degrees (phase plates), B-factor Å²
(envelope ``exp(−B s² / 4)``). The sign is RELION's: positive at low frequency, so
``CTF · projection`` shows the molecule bright (the convention of the STAR file and of
contrast-inverted extracted particles).

:func:`ctf_params_from_table` is the one place a CTF is read from a particle table (RELION column
names, as :mod:`cryomap.io.star` and :mod:`cryomap.io.cs` deliver them).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch


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


def ctf_2d(
    defocus_u: np.ndarray | float,
    defocus_v: np.ndarray | float,
    angle: np.ndarray | float,
    *,
    voltage: float,
    cs: float,
    amplitude_contrast: float,
    apix: float,
    shape: tuple[int, int],
    bfactor: float = 0.0,
    phase_shift: np.ndarray | float = 0.0,
    rfft: bool = True,
) -> torch.Tensor:
    """CTF images (N, h, w//2+1) (``rfft``) or (N, h, w), un-shifted (DC at [0, 0]) as ``torch.fft`` lays them out.

    Defoci Å, angle and ``phase_shift`` degrees (per image or one value), voltage kV, Cs mm,
    ``apix`` Å/px, ``bfactor`` Å².
    """
    from torch_ctf import calculate_ctf_2d

    u, v, a = normalise_defocus(np.atleast_1d(defocus_u), np.atleast_1d(defocus_v), np.atleast_1d(angle))
    ctf = calculate_ctf_2d(
        defocus=torch.as_tensor((u + v) / 2.0 * 1e-4, dtype=torch.float32),
        astigmatism=torch.as_tensor((u - v) / 2.0 * 1e-4, dtype=torch.float32),
        astigmatism_angle=torch.as_tensor(a, dtype=torch.float32),
        voltage=float(voltage),
        spherical_aberration=float(cs),
        amplitude_contrast=float(amplitude_contrast),
        phase_shift=_per_image(phase_shift, len(u)),
        pixel_size=float(apix),
        image_shape=tuple(shape),
        rfft=rfft,
        fftshift=False,
    )
    if bfactor:
        fy = torch.fft.fftfreq(shape[0]) / apix
        fx = (torch.fft.rfftfreq(shape[1]) if rfft else torch.fft.fftfreq(shape[1])) / apix
        s2 = fy[:, None] ** 2 + fx[None, :] ** 2
        ctf = ctf * torch.exp(-float(bfactor) * s2 / 4.0)
    return ctf


def _per_image(value: np.ndarray | float, n: int) -> torch.Tensor | float:
    """A scalar stays a float; an array becomes an (n,) float32 tensor (torch-ctf broadcasts both)."""
    arr = np.atleast_1d(np.asarray(value, dtype=np.float64))
    if arr.size == 1:
        return float(arr[0])
    if arr.size != n:
        raise ValueError(f"{arr.size} phase shifts for {n} images")
    return torch.tensor(arr, dtype=torch.float32)  # a copy: the table's array may be read-only


def ctf_images(params: "CtfParams", apix: float, shape: tuple[int, int], *, rfft: bool = True) -> torch.Tensor:
    """:func:`ctf_2d` for every particle of ``params`` (N, h, w//2+1), DC at [0, 0]."""
    return ctf_2d(params.defocus_u, params.defocus_v, params.angle, voltage=params.voltage, cs=params.cs,
                  amplitude_contrast=params.amplitude_contrast, apix=apix, shape=shape,
                  bfactor=params.bfactor, phase_shift=params.phase_shift, rfft=rfft)


def apply_ctf(
    images: np.ndarray | torch.Tensor,
    params: CtfParams,
    apix: float,
    *,
    out_size: int | None = None,
) -> np.ndarray:
    """Multiply images (N, D, D) by their CTFs in Fourier space; return (N, S, S), S = ``out_size`` (≥ D).

    Images are zero-padded about their centre to ``out_size`` first, so the CTF's delocalised
    fringes are kept rather than wrapped around the box.
    """
    from cryomap.core.fourier import pad_centred

    imgs = torch.as_tensor(np.array(images, dtype=np.float32))
    size = out_size or imgs.shape[-1]
    imgs = pad_centred(imgs, size)
    ctf = ctf_images(params, apix, (size, size))
    out = torch.fft.irfft2(torch.fft.rfft2(imgs) * ctf, s=(size, size))
    return out.numpy().astype(np.float32)


#: Bytes of float32 images :func:`filter_by_ctf` transforms at a time.
FILTER_CHUNK_BYTES = 8 << 20


def filter_by_ctf(images: np.ndarray, params: "CtfParams", apix: float, make_filter) -> np.ndarray:
    """Multiply each image's rfft by ``make_filter(ctf)`` (ctf: (N, h, w//2+1) tensor) and transform back.

    The box is filtered as it is (no padding), as cryoSPARC, ASPIRE and cryoDRGN do for particles.
    Images are transformed :data:`FILTER_CHUNK_BYTES` at a time, so the transforms' temporaries
    stay small whatever N (a micrograph's 300 particles of 256² at once held ~400 MB).
    """
    imgs = torch.as_tensor(np.ascontiguousarray(images, dtype=np.float32))
    if imgs.ndim == 2:
        imgs = imgs[None]
    if len(params) != len(imgs):
        raise ValueError(f"{len(imgs)} images but {len(params)} CTFs")
    h, w = imgs.shape[-2:]
    unique, index = unique_ctfs(params)  # particles of one micrograph usually share their CTF
    index = torch.as_tensor(index)
    out = torch.empty(imgs.shape, dtype=torch.float32)
    step = max(1, FILTER_CHUNK_BYTES // (4 * h * w))
    with torch.no_grad():
        filt = make_filter(ctf_images(unique, apix, (h, w)))
        for a in range(0, len(imgs), step):
            out[a:a + step] = torch.fft.irfft2(torch.fft.rfft2(imgs[a:a + step]) * filt[index[a:a + step]], s=(h, w))
    return out.numpy()


def unique_ctfs(params: "CtfParams") -> tuple["CtfParams", np.ndarray]:
    """The distinct per-particle CTFs of ``params`` and, per particle, the index of its own among them."""
    n = len(params)
    cols = np.stack([np.broadcast_to(np.atleast_1d(np.asarray(v, dtype=np.float64)), (n,))
                     for v in (params.defocus_u, params.defocus_v, params.angle, params.phase_shift)], axis=1)
    rows, first, index = np.unique(cols, axis=0, return_index=True, return_inverse=True)
    return subset(params, first), index.reshape(-1)


def phase_flip_images(images: np.ndarray, params: "CtfParams", apix: float) -> np.ndarray:
    """Images (N, H, W) × sign(CTF) in Fourier space, each by its own CTF (``apix`` Å/px)."""
    return filter_by_ctf(images, params, apix, lambda c: torch.where(c < 0, -1.0, 1.0).to(c.dtype))


def wiener_images(images: np.ndarray, params: "CtfParams", apix: float, constant: float) -> np.ndarray:
    """Images (N, H, W) Wiener-filtered by their CTFs: ``F · CTF / (CTF² + constant)``, ``constant`` > 0."""
    if not constant > 0:
        raise ValueError(f"the Wiener constant must be positive, got {constant}")
    return filter_by_ctf(images, params, apix, lambda c: c / (c * c + float(constant)))


def ctf_zero_frequencies(defocus: float, voltage: float, cs: float, amplitude_contrast: float,
                         max_freq: float, n: int = 4) -> np.ndarray:
    """Spatial frequencies (1/Å) of the first ``n`` CTF zeros for an isotropic defocus (Å), from the formula.

    χ(s) = π λ Δf s² − π/2 Cs λ³ s⁴, CTF = −sin(χ' ) with the amplitude-contrast phase; zeros
    where χ(s) + arcsin(w) = kπ. Used by tests to check simulated power spectra.
    """
    from torch_ctf import calculate_relativistic_electron_wavelength

    lam = float(calculate_relativistic_electron_wavelength(voltage * 1e3)) * 1e10
    s = np.linspace(0, max_freq, 200001)
    chi = np.pi * lam * defocus * s**2 - np.pi / 2 * cs * 1e7 * lam**3 * s**4
    phase = chi + np.arcsin(amplitude_contrast)
    k = np.floor(phase / np.pi)
    idx = np.nonzero(np.diff(k) != 0)[0]
    return s[idx][:n]


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


def ctf_at(params: CtfParams, fx: torch.Tensor, fy: torch.Tensor) -> torch.Tensor:
    """CTF of every particle of ``params`` at frequencies ``(fx, fy)`` (cycles/Å, shape (M,)) → (N, M) float32.

    The same formula as :func:`ctf_2d` (torch-ctf's: ``−sin(χ)`` with the astigmatic defocus
    ``Δf(φ) = mean + astig·cos 2(φ − angle)``, the amplitude contrast as a phase
    ``arctan(A/√(1−A²))``, the phase shift, the B-factor envelope), evaluated only where it is
    needed: ``cos 2(φ − θ)·s² = (fx² − fy²)·cos 2θ + 2·fx·fy·sin 2θ``, so the phase is one small
    matrix product of per-particle coefficients with four per-sample terms. Written out because
    the reconstruction needs the CTF at the few thousand Fourier samples it inserts, and torch-ctf
    renders full 2D grids (250 µs per 128² image, more than the whole insertion);
    tests/test_reconstruct_kernels.py checks that the two agree.
    """
    from torch_ctf import calculate_relativistic_electron_wavelength

    u, v, a = normalise_defocus(np.atleast_1d(params.defocus_u), np.atleast_1d(params.defocus_v),
                                np.atleast_1d(params.angle))
    n = len(u)
    dev = fx.device
    ps = np.broadcast_to(np.atleast_1d(np.asarray(params.phase_shift, dtype=np.float64)), (n,))
    lam = float(calculate_relativistic_electron_wavelength(float(params.voltage) * 1e3)) * 1e10  # Å
    w = float(params.amplitude_contrast)
    mean, astig, ang = (u + v) / 2.0, (u - v) / 2.0, np.deg2rad(a)
    coef = np.stack([np.pi * lam * mean, np.pi * lam * astig * np.cos(2 * ang), np.pi * lam * astig * np.sin(2 * ang),
                     np.deg2rad(ps) + np.arctan(w / np.sqrt(1.0 - w * w))], 1)
    fx32, fy32 = fx.to(torch.float32).reshape(-1), fy.to(torch.float32).reshape(-1)
    s2 = fx32 * fx32 + fy32 * fy32
    basis = torch.stack([s2, fx32 * fx32 - fy32 * fy32, 2.0 * fx32 * fy32, torch.ones_like(s2)])  # (4, M)
    chi = torch.as_tensor(coef, dtype=torch.float32, device=dev) @ basis
    chi -= float(np.pi / 2.0 * float(params.cs) * 1e7 * lam**3) * (s2 * s2)
    ctf = torch.sin(chi)
    if params.bfactor:
        ctf *= torch.exp(-float(params.bfactor) * s2 / 4.0)
    return ctf
