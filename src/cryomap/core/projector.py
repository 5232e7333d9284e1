"""Fourier-slice projection of a map in RELION's convention (torch-fourier-slice): real-space images.

A shared primitive (simulation, reconstruction checks, 2D classification); the Fourier-domain
slice extraction and insertion that ab initio and refinement use sit beside it in
:mod:`cryomap.core.backprojector`.

``image(x, y) = Σ_z V(Aᵀ · (x, y, z))`` with ``A`` the RELION ZYZ matrix of (rot, tilt, psi)
(:func:`cryomap.core.euler.euler_to_matrix`), x the fast axis and the centre of both the map
and the image at pixel ``box // 2`` (RELION's logical origin, the same centre extraction uses).
A particle's ``rlnOriginX/YAngst`` = (ox, oy) Å means its centre sits at ``box // 2 − o / apix``,
i.e. the projection is shifted by ``−o`` (RELION ≥ 3.1; re-centring subtracts the origin from the
coordinate). Checked against ``relion_project`` output (tests/test_simulate_projection.py).

relion_project quirk (measured on its output): for an *odd* box it writes images whose centre is
pixel ``box // 2 + 1`` on both axes (its inverse-FFT centring is off by one for odd sizes), while
its map centre is ``box // 2``. ``centre="relion_project"`` reproduces those files exactly; the
default ``"relion"`` keeps the centre at ``box // 2`` as RELION's extraction and reconstruction do.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from cryomap.core.euler import euler_to_matrix
from cryomap.core.fourier import fourier_shift_images


def _as_volume(volume: torch.Tensor | np.ndarray) -> torch.Tensor:
    vol = torch.as_tensor(np.asarray(volume) if not isinstance(volume, torch.Tensor) else volume)
    vol = vol.to(torch.float32)
    if vol.ndim != 3 or len(set(vol.shape)) != 1:
        raise ValueError(f"volume must be cubic (D, D, D), got {tuple(vol.shape)}")
    return vol


class Projector:
    """A map prepared once for many projections (the padded, gridding-corrected 3D DFT is cached).

    Follows ``torch_fourier_slice.project_3d_to_2d`` step for step (edge-value removal, zero
    padding, sinc² gridding correction, central-slice extraction), split so the 3D FFT is not
    recomputed for every batch of orientations.
    """

    def __init__(self, volume: torch.Tensor | np.ndarray, pad_factor: float = 2.0) -> None:
        from torch_fourier_slice.volume_utils import compute_cube_face_averages, separable_sinc2_correction

        vol = _as_volume(volume)
        self.box = int(vol.shape[-1])
        self.odd = self.box % 2 == 1
        if self.odd:
            # torch-fourier-slice mis-centres odd boxes (its padded box stays odd): prepend one
            # zero plane on each axis so the box is even with the same centre voxel; crop after.
            vol = torch.nn.functional.pad(vol, [1, 0, 1, 0, 1, 0])
        d = vol.shape[-1]
        self.edge_value = compute_cube_face_averages(vol, n=4)
        vol = vol - self.edge_value
        self.pad = int((d * (pad_factor - 1.0)) // 2)
        if self.pad > 0:
            vol = torch.nn.functional.pad(vol, [self.pad] * 6)
        self.padded_shape = tuple(vol.shape[-3:])
        vol = vol / separable_sinc2_correction(self.padded_shape, device=vol.device)
        dft = torch.fft.rfftn(torch.fft.ifftshift(vol, dim=(-3, -2, -1)), dim=(-3, -2, -1))
        self.dft = torch.fft.fftshift(dft, dim=(-3, -2))
        self.unpadded = d

    def __call__(self, matrices_xyz: torch.Tensor) -> torch.Tensor:
        """Projections (N, D, D) for torch-fourier-slice matrices (N, 3, 3) (= RELION Aᵀ)."""
        from torch_fourier_slice import extract_central_slices_rfft_3d

        # fftfreq_max = 0.5: sample only inside the Nyquist sphere, as RELION's projector does
        # (r_max = box/2); it also skips ~20 % of the interpolation work
        slices = extract_central_slices_rfft_3d(volume_rfft=self.dft, rotation_matrices=matrices_xyz,
                                                fftfreq_max=0.5)
        slices = torch.fft.ifftshift(slices, dim=(-2,))
        imgs = torch.fft.irfftn(slices, dim=(-2, -1), s=self.padded_shape[-2:])
        imgs = torch.fft.fftshift(imgs, dim=(-2, -1))
        if self.pad > 0:
            imgs = imgs[..., self.pad:-self.pad, self.pad:-self.pad]
        imgs = imgs + self.edge_value * self.unpadded
        if self.odd:
            imgs = imgs[..., 1:, 1:]
        return imgs

    def project(
        self,
        rot: np.ndarray,
        tilt: np.ndarray,
        psi: np.ndarray,
        shifts_A: np.ndarray | None = None,
        apix: float = 1.0,
        *,
        batch_size: int = 256,
        centre: Literal["relion", "relion_project"] = "relion",
    ) -> np.ndarray:
        """See :func:`project`."""
        rot, tilt, psi = (np.atleast_1d(np.asarray(a, dtype=np.float64)) for a in (rot, tilt, psi))
        n = len(rot)
        # torch-fourier-slice samples V at R·(x, y, z) for image pixel (x, y), so R = Aᵀ.
        matrices = torch.as_tensor(euler_to_matrix(rot, tilt, psi).transpose(0, 2, 1).copy(), dtype=torch.float32)
        d = self.box
        out = np.empty((n, d, d), dtype=np.float32)
        with torch.no_grad():
            for start in range(0, n, batch_size):
                stop = min(n, start + batch_size)
                imgs = self(matrices[start:stop])
                shift_px = torch.zeros((stop - start, 2), dtype=torch.float64)
                if shifts_A is not None:
                    shift_px -= torch.as_tensor(np.array(shifts_A, dtype=np.float64).reshape(-1, 2)[start:stop]) / float(apix)
                if self.odd and centre == "relion_project":
                    shift_px += 1.0
                if bool(torch.any(shift_px != 0)):
                    imgs = fourier_shift_images(imgs, shift_px)
                out[start:stop] = imgs.numpy()
        return out


def project(
    volume: torch.Tensor | np.ndarray,
    rot: np.ndarray,
    tilt: np.ndarray,
    psi: np.ndarray,
    shifts_A: np.ndarray | None = None,
    apix: float = 1.0,
    *,
    batch_size: int = 256,
    centre: Literal["relion", "relion_project"] = "relion",
    pad_factor: float = 2.0,
) -> np.ndarray:
    """Project a cubic map (D, D, D) at RELION Euler angles (degrees) → images (N, D, D), float32.

    ``shifts_A`` (N, 2) are RELION ``rlnOriginXAngst/YAngst`` in Å (the particle centre moves to
    ``box // 2 − shift / apix``); ``apix`` is the pixel size in Å/px. Works in batches of
    ``batch_size`` orientations so memory stays bounded. Image values are line integrals of
    the map (sum over z of voxel values). For many calls on one map, build a :class:`Projector`.
    """
    return Projector(volume, pad_factor=pad_factor).project(
        rot, tilt, psi, shifts_A, apix, batch_size=batch_size, centre=centre
    )
