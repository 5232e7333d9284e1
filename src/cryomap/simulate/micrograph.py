"""Micrograph assembly: non-overlapping placement, per-particle CTF, ice background, shot noise at an SNR.

The recorded micrograph is a dose image in electrons per pixel, particles darker than the ice
(as a real micrograph; extract with contrast inversion to get the STAR/``clean/`` convention):

    E(x) = λ · (1 + g(x)) − λ k · (S(x) + a · I(x)),     counts ~ Poisson(E)

with λ the dose (e⁻/px), ``g`` a smooth ice-thickness gradient, ``S`` the sum of the particles'
CTF-modulated projections (each with its own defocus, pasted from a 2×-padded box so CTF fringes
reach neighbours and edges), and ``I`` amorphous-ice structure noise filtered by the micrograph
CTF (it carries the Thon rings). **SNR** = mean over the micrograph's particles of the variance of
the particle signal ``λ k S`` in the particle box (``box``² around the pick) ÷ the variance of
everything else in that box (shot noise + ice structure), the noise variance being
``λ / (1 − ice_fraction)``; ``k`` and ``a`` are set per micrograph to meet it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from cryomap.errors import BadInputError
from cryomap.core.ctf import CtfParams, apply_ctf, ctf_2d

#: Disc packing fraction used when the number of micrographs is chosen automatically, and the
#: most cryomap will try to place when the user fixes it (random sequential packing jams at 0.547).
AUTO_PACKING = 0.25
MAX_PACKING = 0.45


def micrograph_capacity(size: int, box: int, diameter_px: float, packing: float = MAX_PACKING) -> int:
    """How many particles of ``diameter_px`` fit, centres ≥ ``box/2`` from the edges, at disc ``packing`` fraction."""
    usable = size - box
    if usable < 0:
        return 0
    area = float(usable + 1) ** 2
    disc = np.pi * diameter_px**2 / 4.0
    return max(1, int(packing * area / disc))


def place_particles(n: int, size: int, box: int, diameter_px: float, rng: np.random.Generator,
                    max_candidates: int | None = None) -> np.ndarray:
    """``n`` integer pick positions (x = column, y = row), centres ≥ ``diameter_px`` apart and ≥ box/2 from edges.

    Random sequential placement (dart throwing): candidates are drawn uniformly and kept when
    no accepted centre is closer than the diameter. Raises if they do not fit.
    """
    lo, hi = box // 2, size - (box - box // 2)  # extraction box [c - box//2, c - box//2 + box) inside
    if hi < lo:
        raise BadInputError(f"micrograph of {size} px cannot hold a particle box of {box} px")
    accepted = np.empty((n, 2), dtype=np.int64)
    count = 0
    budget = max_candidates or 200 * n + 1000
    d2 = diameter_px**2
    drawn = 0
    while count < n and drawn < budget:
        cand = rng.integers(lo, hi + 1, size=(min(4096, budget - drawn), 2))
        drawn += len(cand)
        for c in cand:
            if count and np.min(((accepted[:count] - c) ** 2).sum(1)) < d2:
                continue
            accepted[count] = c
            count += 1
            if count == n:
                break
    if count < n:
        raise BadInputError(
            f"could place only {count} of {n} non-overlapping particles ({diameter_px:.0f} px across) "
            f"in a {size}×{size} px micrograph; use more micrographs or a larger --micrograph-size"
        )
    return accepted


def paste(canvas: np.ndarray, images: np.ndarray, coords: np.ndarray) -> None:
    """Add images (n, S, S) into ``canvas`` with pixel S//2 on each (x, y) coordinate; clipped at the edges."""
    h, w = canvas.shape
    s = images.shape[-1]
    for img, (x, y) in zip(images, coords):
        y0, x0 = int(y) - s // 2, int(x) - s // 2
        ya, xa = max(0, y0), max(0, x0)
        yb, xb = min(h, y0 + s), min(w, x0 + s)
        if ya < yb and xa < xb:
            canvas[ya:yb, xa:xb] += img[ya - y0:yb - y0, xa - x0:xb - x0]


def crop_boxes(image: np.ndarray, coords: np.ndarray, box: int) -> np.ndarray:
    """Boxes (n, box, box) with pixel box//2 on each (x, y) (all boxes must lie inside the image)."""
    out = np.empty((len(coords), box, box), dtype=image.dtype)
    for i, (x, y) in enumerate(coords):
        y0, x0 = int(y) - box // 2, int(x) - box // 2
        out[i] = image[y0:y0 + box, x0:x0 + box]
    return out


def smooth_background(size: int, rng: np.random.Generator, amplitude: float = 0.03) -> np.ndarray:
    """A smooth relative ice-thickness field (size, size): a random plane plus a few broad bumps, peak ≈ ``amplitude``."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1) - 0.5
    theta = rng.uniform(0, 2 * np.pi)
    field = np.cos(theta) * xx + np.sin(theta) * yy
    for _ in range(3):
        cx, cy = rng.uniform(-0.5, 0.5, 2)
        width = rng.uniform(0.2, 0.5)
        field += rng.uniform(-0.5, 0.5) * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * width**2))
    field -= field.mean()
    peak = np.abs(field).max()
    return (amplitude * field / peak if peak > 0 else field).astype(np.float32)


def ice_structure(size: int, rng: np.random.Generator, params: CtfParams, apix: float,
                  defocus_offset: np.ndarray | None = None) -> np.ndarray:
    """Unit-variance amorphous-ice noise: white Gaussian potential filtered by the micrograph's mean CTF.

    ``defocus_offset`` (size, size) Å, optional: a defocus added per pixel (a tilted specimen).
    The noise is then filtered at defocus levels spanning the offsets, close enough that the CTF
    phase changes by at most 0.2 rad at Nyquist between neighbours (at most 64 levels), and
    interpolated linearly per pixel between the two nearest levels.
    """
    white = torch.as_tensor(rng.standard_normal((size, size), dtype=np.float32))
    spectrum = torch.fft.rfft2(white)

    def filtered(shift: float) -> torch.Tensor:
        ctf = ctf_2d(params.defocus_u + shift, params.defocus_v + shift, params.angle, voltage=params.voltage,
                     cs=params.cs, amplitude_contrast=params.amplitude_contrast, apix=apix, shape=(size, size),
                     bfactor=params.bfactor)[0]
        return torch.fft.irfft2(spectrum * ctf, s=(size, size))

    if defocus_offset is None or not np.any(defocus_offset):
        out = filtered(0.0).numpy()
    else:
        from torch_ctf import calculate_relativistic_electron_wavelength

        offset = torch.as_tensor(np.asarray(defocus_offset, dtype=np.float32))
        lo, hi = float(offset.min()), float(offset.max())
        lam = float(calculate_relativistic_electron_wavelength(params.voltage * 1e3)) * 1e10  # Å
        step = 0.2 / (np.pi * lam * (0.5 / apix) ** 2)  # Å of defocus per 0.2 rad at Nyquist
        levels = np.linspace(lo, hi, int(np.clip(np.ceil((hi - lo) / step) + 1, 2, 64)))
        gap = float(levels[1] - levels[0])
        acc = torch.zeros((size, size))
        for level in levels:
            weight = torch.clamp(1.0 - (offset - float(level)).abs() / gap, min=0.0)
            acc += weight * filtered(float(level))
        out = acc.numpy()
    return (out / out.std()).astype(np.float32)


@dataclass
class MicrographLayers:
    """The parts of one simulated micrograph (each (size, size) float32, e⁻/px)."""

    counts: np.ndarray  # the recorded micrograph
    particle_signal: np.ndarray  # −λ k S: the particles alone (noise-free, CTF applied)
    expected: np.ndarray  # E: the noise-free expected dose (background + particles + ice structure)
    background: np.ndarray  # λ (1 + g): the smooth ice background alone
    k: float  # scale of the projections into relative contrast
    dose_per_px: float


def render_micrograph(
    clean: np.ndarray,
    coords: np.ndarray,
    particle_ctf: CtfParams,
    micrograph_ctf: CtfParams,
    *,
    size: int,
    apix: float,
    snr: float,
    dose: float,
    ice_fraction: float,
    gradient: float,
    rng: np.random.Generator,
    defocus_offset: np.ndarray | None = None,
) -> MicrographLayers:
    """Assemble one micrograph from clean projections (n, D, D) at pick ``coords`` (n, 2) (x, y).

    ``dose`` e⁻/Å², ``snr`` as defined in the module docstring, ``ice_fraction`` the share of
    the noise variance that is CTF-filtered ice structure, ``gradient`` the peak relative
    ice-thickness variation, ``defocus_offset`` an optional (size, size) map of defocus (Å) added
    to the micrograph CTF of the ice (a tilted specimen; the particles' own CTFs are in
    ``particle_ctf``).
    """
    if snr <= 0:
        raise BadInputError(f"SNR must be positive, got {snr}")
    box = clean.shape[-1]
    lam = float(dose) * apix**2
    ctf_imgs = apply_ctf(clean, particle_ctf, apix, out_size=2 * box)
    S = np.zeros((size, size), dtype=np.float32)
    paste(S, ctf_imgs, coords)
    mean_var = float(crop_boxes(S, coords, box).var(axis=(1, 2)).mean())
    if not np.isfinite(mean_var) or mean_var <= 0:
        raise BadInputError("the simulated particles carry no signal (empty or flat map)")
    f = float(np.clip(ice_fraction, 0.0, 0.95))
    k = float(np.sqrt(snr / ((1.0 - f) * lam * mean_var)))
    a = float(np.sqrt(f / ((1.0 - f) * lam))) / k
    g = smooth_background(size, rng, gradient) if gradient > 0 else 0.0
    ice = ice_structure(size, rng, micrograph_ctf, apix, defocus_offset) if f > 0 else 0.0
    particle_signal = (-lam * k) * S
    background = np.broadcast_to(np.float32(lam) * (1.0 + np.asarray(g, dtype=np.float32)), (size, size))
    expected = background + particle_signal - np.float32(lam * k * a) * ice
    counts = rng.poisson(np.clip(expected, 0.0, None)).astype(np.float32)
    return MicrographLayers(counts=counts, particle_signal=particle_signal.astype(np.float32),
                            expected=np.asarray(expected, dtype=np.float32),
                            background=np.asarray(background, dtype=np.float32), k=k, dose_per_px=lam)
