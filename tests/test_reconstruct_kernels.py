"""The shared Fourier kernels of issue 16: point CTF, slice insertion (numba and torch), slice extraction."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cryomap.core.backprojector import Backprojector, SliceExtractor, image_dfts, slice_coordinates, slice_points
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


def _reference_sums(pts, values, weights, rot, interpolation: str) -> tuple[np.ndarray, np.ndarray]:
    """The Hermitian full-grid sums the plain way: every sample and its Friedel mate (−k, conj) spread
    trilinearly (or to the nearest voxel) onto a periodic L³ grid in FFT order, float64."""
    L = pts.L
    a = rot.double().numpy()
    kx, ky = pts.kx.double().numpy(), pts.ky.double().numpy()
    d = np.zeros((L, L, L), np.complex128)
    w = np.zeros((L, L, L))
    for b in range(len(a)):
        xyz = kx[:, None] * a[b, 0] + ky[:, None] * a[b, 1]  # (M, 3) x, y, z
        for sign in (1.0, -1.0):
            p = sign * xyz
            v = values[b].numpy().astype(np.complex128)
            v = v if sign > 0 else np.conj(v)
            wt = weights[b].numpy().astype(np.float64)
            if interpolation == "nearest":
                corners = [(np.floor(p + 0.5), np.ones(len(p)))]
            else:
                f = np.floor(p)
                t = p - f
                corners = []
                for dz in (0, 1):
                    for dy in (0, 1):
                        for dx in (0, 1):
                            off = np.array([dx, dy, dz])
                            kern = np.prod(np.where(off == 1, t, 1 - t), axis=1)
                            corners.append((f + off, kern))
            for g, kern in corners:
                i = tuple((g[:, ax].astype(int) % L) for ax in (2, 1, 0))  # z, y, x
                np.add.at(d, i, kern * v)
                np.add.at(w, i, kern * wt)
    return d, w


@pytest.mark.parametrize("interpolation", ["trilinear", "nearest"])
@pytest.mark.parametrize("use_numba", [True, False])
def test_half_grid_insertion_equals_the_plain_hermitian_sums(interpolation, use_numba):
    """The mirrored kx ≥ 0 half grid, its margins and the two self-mirrored planes (kx = 0, L/2) folded,
    equals spreading every sample and its Friedel mate onto a periodic full grid."""
    pts = slice_points(12, 2.0)
    rng = np.random.default_rng(3)
    b = 12
    rot = torch.as_tensor(euler_to_matrix(*random_euler_angles(b, rng)), dtype=torch.float32)
    values = torch.randn(b, len(pts), dtype=torch.complex64)
    weights = torch.rand(b, len(pts))
    if interpolation == "nearest":  # a coordinate on a rounding tie (x.5) may round either way after the mirror
        frac = slice_coordinates(pts, rot).remainder(1.0)
        tie = ((frac - 0.5).abs() < 1e-3).any(-1)
        values[tie], weights[tie] = 0, 0
    bp = Backprojector(pts, interpolation, 2, use_numba=use_numba)
    bp.insert(values, weights, rot, np.arange(b) % 2)
    ref_d, ref_w = _reference_sums(pts, values, weights, rot, interpolation)
    d, w = bp.full_grids()
    assert float(np.abs(d.numpy() - ref_d).max()) < 1e-4 * float(np.abs(ref_d).max())
    assert float(np.abs(w.numpy() - ref_w).max()) < 1e-4 * float(ref_w.max())
    dh, wh = bp.half_grids()
    assert np.allclose(dh.numpy(), ref_d[..., : pts.L // 2 + 1], atol=1e-4 * float(np.abs(ref_d).max()))


def test_in_place_margin_fold_is_idempotent_and_inserting_after_it_adds_up():
    """Folding twice changes nothing; slices inserted after a fold fold at the next call."""
    pts = slice_points(16, 2.0)
    rng = np.random.default_rng(3)
    rot = torch.as_tensor(euler_to_matrix(*random_euler_angles(30, rng)), dtype=torch.float32)
    values = torch.randn(30, len(pts), dtype=torch.complex64)
    bp = Backprojector(pts, "trilinear", 2)
    bp.insert(values[:20], None, rot[:20], np.arange(20) % 2)
    d, w = bp.half_grids([1])
    d2, w2 = bp.half_grids([1])  # idempotent
    assert torch.equal(d, d2) and torch.equal(w, w2)
    bp.insert(values[20:], None, rot[20:], np.arange(20, 30) % 2)  # after a fold, then once more
    whole = Backprojector(pts, "trilinear", 2)
    whole.insert(values, None, rot, np.arange(30) % 2)
    for a, b in zip(bp.half_grids(None), whole.half_grids(None)):
        assert torch.allclose(a, b, atol=1e-4)


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


def test_releasing_each_set_after_its_sums_gives_the_same_maps():
    """finish(free=True) frees each half set's grid as soon as its sums are taken (lower peak memory):
    the maps are the same bytes as keeping both, a released set cannot be read again, and the
    per-set grids add up to the flat layout workers send (add_grid)."""
    from cryomap.reconstruct.backproject import finish

    pts = slice_points(16, 2.0)
    rng = np.random.default_rng(5)
    rot = torch.as_tensor(euler_to_matrix(*random_euler_angles(40, rng)), dtype=torch.float32)
    values = torch.randn(40, len(pts), dtype=torch.complex64)
    sets = np.arange(40) % 2
    kept, freed = Backprojector(pts, "trilinear", 2), Backprojector(pts, "trilinear", 2)
    for bp in (kept, freed):
        bp.insert(values, None, rot, sets)
    merged = Backprojector(pts, "trilinear", 2)
    merged.add_grid(kept.grid)
    assert torch.equal(merged.grid, kept.grid) and float(kept.grid.abs().sum()) > 0
    a = finish(kept, 16, 2.0, free=False, mask_diameter_A=0)
    b = finish(freed, 16, 2.0, free=True, mask_diameter_A=0)
    for x, y in ((a.full, b.full), (a.half1, b.half1), (a.half2, b.half2)):
        np.testing.assert_array_equal(x, y)
    assert all(g.numel() == 0 for g in freed.grids)
    with pytest.raises(ValueError, match="released"):
        freed.half_grids([0])
