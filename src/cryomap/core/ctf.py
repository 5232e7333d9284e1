"""The contrast transfer function every stage shares: RELION parameters in, torch-ctf inside.

RELION units in, torch-ctf units inside: ``defocus_u/v`` Å (positive = underfocus, U ≥ V after
:func:`normalise_defocus`), ``angle`` degrees from the image x axis to the U direction, voltage
kV, Cs mm, amplitude contrast as a fraction, phase shift degrees (phase plates), B-factor Å²
(envelope ``exp(−B s² / 4)``). The sign is RELION's: positive at low frequency, so
``CTF · projection`` shows the molecule bright (the convention of the STAR file and of
contrast-inverted extracted particles).

The parameters (:class:`CtfParams`, :func:`ctf_params_from_table`, the one place a CTF is read
from a particle table) and the formula in numpy live in :mod:`cryomap.core.ctf_params`, which
does not import torch; they are re-exported here. Phase flipping is
:mod:`cryomap.core.phase_flip` (OpenCV's DFT, no torch), re-exported as :func:`phase_flip_images`.
"""

from __future__ import annotations

import numpy as np
import torch

from cryomap.core.ctf_params import (  # noqa: F401  (re-exported: the CTF's public names live here)
    CTF_REQUIRED_COLUMNS,
    CtfParams,
    ctf_params_from_table,
    ctf_phase_coefficients,
    electron_wavelength_A,
    missing_ctf_columns,
    normalise_defocus,
    subset,
    unique_ctfs,
)
from cryomap.core.phase_flip import phase_flip_images  # noqa: F401


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
    lam = electron_wavelength_A(voltage)
    s = np.linspace(0, max_freq, 200001)
    chi = np.pi * lam * defocus * s**2 - np.pi / 2 * cs * 1e7 * lam**3 * s**4
    phase = chi + np.arcsin(amplitude_contrast)
    k = np.floor(phase / np.pi)
    idx = np.nonzero(np.diff(k) != 0)[0]
    return s[idx][:n]


def ctf_at(params: CtfParams, fx: torch.Tensor, fy: torch.Tensor) -> torch.Tensor:
    """CTF of every particle of ``params`` at frequencies ``(fx, fy)`` (cycles/Å, shape (M,)) → (N, M) float32.

    The same formula as :func:`ctf_2d` (torch-ctf's, :mod:`cryomap.core.ctf_params`), evaluated
    only where it is needed: the phase is one small matrix product of the per-particle
    coefficients (:func:`ctf_phase_coefficients`) with four per-sample terms. Written out because
    the reconstruction needs the CTF at the few thousand Fourier samples it inserts, and torch-ctf
    renders full 2D grids (250 µs per 128² image, more than the whole insertion);
    tests/test_reconstruct_kernels.py checks that the two agree.
    """
    coef, quartic = ctf_phase_coefficients(params)
    dev = fx.device
    fx32, fy32 = fx.to(torch.float32).reshape(-1), fy.to(torch.float32).reshape(-1)
    s2 = fx32 * fx32 + fy32 * fy32
    basis = torch.stack([s2, fx32 * fx32 - fy32 * fy32, 2.0 * fx32 * fy32, torch.ones_like(s2)])  # (4, M)
    chi = torch.as_tensor(coef, dtype=torch.float32, device=dev) @ basis
    chi -= quartic * (s2 * s2)
    ctf = torch.sin(chi)
    if params.bfactor:
        ctf *= torch.exp(-float(params.bfactor) * s2 / 4.0)
    return ctf
