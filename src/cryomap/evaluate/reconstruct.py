"""Direct Fourier reconstruction from particles with known poses: the physics baseline.

Each image's 2D DFT is inserted as a central slice of the 3D DFT (torch-fourier-slice
``insert_central_slices_rfft_3d``, RELION's convention: the slice for RELION angles (rot, tilt,
psi) is inserted with the matrix ``Aᵀ``, the same one :func:`cryomap.simulate.projection.project`
extracts with). Without CTF the sum is divided by the summed interpolation weights; with CTF
parameters it is a Wiener-style filter ``Σ CTF·F / (Σ CTF² + ε)``. Images are re-centred by their
``rlnOriginX/YAngst`` first. Boxes of any parity; maps keep the centre at ``box // 2``.
"""

from __future__ import annotations

import numpy as np
import torch

from cryomap.core.euler import euler_to_matrix
from cryomap.core.ctf import CtfParams, ctf_images, subset
from cryomap.core.fourier import fourier_shift_images
from cryomap.core.threads import torch_threads


def reconstruct(
    images: np.ndarray | torch.Tensor,
    rot: np.ndarray,
    tilt: np.ndarray,
    psi: np.ndarray,
    shifts_A: np.ndarray | None = None,
    apix: float = 1.0,
    ctf: CtfParams | None = None,
    *,
    wiener_epsilon: float = 1.0,
    pad_factor: float = 2.0,
    batch_size: int = 256,
    threads: int | None = 1,
) -> np.ndarray:
    """Reconstruct a (D, D, D) map (z, y, x; float32) from images (N, D, D) at RELION poses.

    ``rot``/``tilt``/``psi`` degrees (RELION ZYZ), ``shifts_A`` (N, 2) RELION
    ``rlnOriginX/YAngst`` in Å, ``apix`` Å/px. With ``ctf`` (per-particle
    :class:`~cryomap.core.ctf.CtfParams`), images are taken as CTF-modulated (RELION sign)
    and corrected by a Wiener-style filter with constant ``wiener_epsilon`` (in units of summed
    CTF² weight). Images may be a memory-mapped stack: they are read ``batch_size`` at a time.
    Voxel values are on the scale of the original map (the inverse of ``project``).
    ``threads``: torch intra-op threads while inserting (see :mod:`cryomap.core.threads`).
    """
    with torch_threads(threads):
        return _reconstruct(images, rot, tilt, psi, shifts_A, apix, ctf, wiener_epsilon, pad_factor, batch_size)


def _reconstruct(images, rot, tilt, psi, shifts_A, apix, ctf, wiener_epsilon, pad_factor, batch_size) -> np.ndarray:
    """The work of :func:`reconstruct` (arguments as there), run inside its thread setting."""
    from torch_fourier_slice import insert_central_slices_rfft_3d
    from torch_fourier_slice.volume_utils import separable_sinc2_correction

    n, h, w = images.shape  # an array, a memmap or a ParticleSource (read ``batch_size`` rows at a time)
    if h != w:
        raise ValueError(f"images must be square, got {h}×{w}")
    rot, tilt, psi = (np.atleast_1d(np.asarray(a, dtype=np.float64)) for a in (rot, tilt, psi))
    if not (len(rot) == len(tilt) == len(psi) == n):
        raise ValueError(f"{n} images but {len(rot)} poses")
    d = w
    odd = d % 2 == 1
    d_even = d + 1 if odd else d
    p = int((d_even * (pad_factor - 1.0)) // 2)
    size = d_even + 2 * p
    volume_shape = (size, size, size)
    matrices = torch.as_tensor(euler_to_matrix(rot, tilt, psi).transpose(0, 2, 1).copy(), dtype=torch.float32)
    numerator = None
    denominator = None
    # fftfreq_max = 0.5: only the sphere inside Nyquist is inserted (the corners carry no
    # isotropic information and cost ~20 % of the time)
    with torch.no_grad():
        for start in range(0, n, batch_size):
            stop = min(n, start + batch_size)
            imgs = torch.as_tensor(np.array(images[start:stop], dtype=np.float32))
            if shifts_A is not None:
                shifts = torch.as_tensor(np.array(shifts_A, dtype=np.float64).reshape(-1, 2)[start:stop]) / float(apix)
                if bool(torch.any(shifts != 0)):
                    imgs = fourier_shift_images(imgs, shifts)  # undo the origin: centre back to box//2
            if odd:  # same trick as the projector: prepend a row/column so box//2 stays the centre
                imgs = torch.nn.functional.pad(imgs, [1, 0, 1, 0])
            imgs = torch.nn.functional.pad(imgs, [p] * 4)
            ft = torch.fft.fftshift(torch.fft.rfft2(torch.fft.ifftshift(imgs, dim=(-2, -1))), dim=(-2,))
            if ctf is not None:
                c = ctf_images(subset(ctf, slice(start, stop)), apix, (size, size))
                c = torch.fft.fftshift(c, dim=(-2,))
                num, _ = insert_central_slices_rfft_3d(ft * c, volume_shape, matrices[start:stop], fftfreq_max=0.5)
                den, _ = insert_central_slices_rfft_3d((c * c).to(torch.complex64), volume_shape, matrices[start:stop],
                                                      fftfreq_max=0.5)
                den = den.real
            else:
                num, den = insert_central_slices_rfft_3d(ft, volume_shape, matrices[start:stop], fftfreq_max=0.5)
            numerator = num if numerator is None else numerator + num
            denominator = den if denominator is None else denominator + den
    if ctf is not None:
        dft = numerator / (denominator + float(wiener_epsilon))
    else:
        dft = numerator / torch.clamp(denominator, min=1.0)
    vol = torch.fft.irfftn(torch.fft.ifftshift(dft, dim=(-3, -2)), dim=(-3, -2, -1), s=volume_shape)
    vol = torch.fft.fftshift(vol, dim=(-3, -2, -1))
    vol = vol / separable_sinc2_correction(vol.shape, device=vol.device)
    if p > 0:
        vol = vol[p:-p, p:-p, p:-p]
    if odd:
        vol = vol[1:, 1:, 1:]
    return vol.numpy().astype(np.float32)


def half_set_reconstructions(
    images: np.ndarray | torch.Tensor,
    rot: np.ndarray,
    tilt: np.ndarray,
    psi: np.ndarray,
    shifts_A: np.ndarray | None = None,
    apix: float = 1.0,
    ctf: CtfParams | None = None,
    *,
    seed: int = 0,
    **kwargs,
) -> tuple[np.ndarray, np.ndarray]:
    """Two independent reconstructions from a random half split of the particles (gold-standard FSC).

    The split is a seeded permutation (``seed``); each half keeps the stack order. Other keyword
    arguments go to :func:`reconstruct`.
    """
    n = len(images)
    if n < 2:
        raise ValueError("need at least two particles for half sets")
    order = np.random.default_rng(seed).permutation(n)
    halves = [np.sort(order[: n // 2]), np.sort(order[n // 2:])]
    out = []
    for idx in halves:
        # a particle source subsets lazily (read chunk by chunk); an array is indexed
        imgs = images.subset(idx) if hasattr(images, "subset") else np.asarray(images[idx])
        out.append(reconstruct(
            imgs, np.asarray(rot)[idx], np.asarray(tilt)[idx], np.asarray(psi)[idx],
            None if shifts_A is None else np.asarray(shifts_A)[idx], apix,
            None if ctf is None else subset(ctf, idx), **kwargs))
    return out[0], out[1]
