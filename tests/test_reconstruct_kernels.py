"""The shared Fourier kernels of issue 16: point CTF, slice insertion (numba and torch), slice extraction."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cryomap.core.backprojector import Backprojector, SliceExtractor, image_dfts, slice_points
from cryomap.core.ctf import CtfParams, ctf_at, ctf_images
from cryomap.core.euler import euler_to_matrix, random_euler_angles
from cryomap.core.projector import project


def _blobs(box: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    z, y, x = (np.mgrid[:box, :box, :box] - box // 2).astype(np.float32)
    v = np.zeros((box,) * 3, np.float32)
    for _ in range(6):
        c = rng.uniform(-box / 6, box / 6, 3)
        v += np.exp(-((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) / (2 * 2.0**2)).astype(np.float32)
    return v


def test_point_ctf_equals_torch_ctf_grid():
    rng = np.random.default_rng(0)
    n, size, apix = 6, 48, 1.7
    p = CtfParams(rng.uniform(8e3, 3e4, n), rng.uniform(8e3, 3e4, n), rng.uniform(-180, 180, n), bfactor=40.0,
                  phase_shift=rng.uniform(0, 90, n))
    grid = ctf_images(p, apix, (size, size))
    fy = (torch.fft.fftfreq(size)[:, None] / apix).expand(size, size // 2 + 1)
    fx = (torch.fft.rfftfreq(size)[None, :] / apix).expand(size, size // 2 + 1)
    pts = ctf_at(p, fx.reshape(-1), fy.reshape(-1)).reshape(n, size, size // 2 + 1)
    assert float((grid - pts).abs().max()) < 2e-4


@pytest.mark.parametrize("interpolation", ["trilinear", "nearest"])
def test_numba_and_torch_insertion_agree(interpolation):
    pts = slice_points(24, 2.0, oversample=2)
    rng = np.random.default_rng(1)
    b = 20
    rot = torch.as_tensor(euler_to_matrix(*random_euler_angles(b, rng)), dtype=torch.float32)
    values = torch.randn(b, len(pts), dtype=torch.complex64)
    weights = torch.rand(b, len(pts))
    sets = np.arange(b) % 2
    a = Backprojector(pts, interpolation, 2, use_numba=True)
    t = Backprojector(pts, interpolation, 2, use_numba=False)
    a.insert(values, weights, rot, sets)
    t.insert(values, weights, rot, sets)
    if interpolation == "trilinear":
        assert float((a.grid - t.grid).abs().max()) < 1e-4
    else:  # rounding of exact half-voxel ties may differ; the totals may not
        assert abs(float(a.grid.sum() - t.grid.sum())) < 1e-2 * float(t.grid.abs().sum()) / len(t.grid) * 100
    assert list(a.count) == [10, 10]
    # the half grid is the kx ≥ 0 part of the Friedel-folded full grid
    d, w = a.full_grids()
    dh, wh = a.half_grids()
    assert torch.allclose(dh, d[..., : a.L // 2 + 1], atol=1e-4) and torch.allclose(wh, w[..., : a.L // 2 + 1], atol=1e-4)
    # Hermitian: G(−k) = conj G(k)
    neg = torch.roll(torch.flip(d, dims=(0, 1, 2)), shifts=(1, 1, 1), dims=(0, 1, 2))
    assert torch.allclose(neg, torch.conj(d), atol=1e-4)


def test_extracted_slices_match_projected_images():
    """image_dfts(project(V, A)) ≈ SliceExtractor(V).slices(A): the central-slice theorem, same samples and centre."""
    box = 32
    vol = _blobs(box)
    rng = np.random.default_rng(2)
    rot, tilt, psi = random_euler_angles(5, rng)
    images = torch.as_tensor(project(vol, rot, tilt, psi))
    pts = slice_points(box, 2.0)
    sel = pts.radius <= box // 2 - 2
    from_images = image_dfts(images, pts)[:, sel]
    slices = SliceExtractor(vol).slices(pts, torch.as_tensor(euler_to_matrix(rot, tilt, psi), dtype=torch.float32))[:, sel]
    err = (from_images - slices).abs().pow(2).sum() / from_images.abs().pow(2).sum()
    assert float(err) < 1e-3
    # a shift passed to image_dfts moves the content: an image shifted by +2 px in x, undone, gives the same samples
    shifted = torch.roll(images, shifts=2, dims=-1)
    back = image_dfts(shifted, pts, torch.full((5, 2), 0.0).index_fill_(1, torch.tensor([0]), -2.0))[:, sel]
    assert float((back - from_images).abs().max()) < 1e-2 * float(from_images.abs().max())
