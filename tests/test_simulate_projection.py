"""Projection physics and RELION's pose convention (issue 3)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import map_coordinates

from cryomap.core.euler import euler_to_matrix, matrix_to_euler, random_euler_angles
from cryomap.core.projector import project


def _blob_volume(d: int, seed: int = 0) -> np.ndarray:
    """A smooth asymmetric test object: a few Gaussian blobs well inside the box."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[0:d, 0:d, 0:d].astype(np.float64) - d // 2
    v = np.zeros((d, d, d))
    for _ in range(6):
        c = rng.uniform(-d / 8, d / 8, 3)
        s = rng.uniform(1.8, 2.5)  # band-limited (little power beyond Nyquist) and compact
        v += rng.uniform(0.5, 1.5) * np.exp(-((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) / (2 * s**2))
    return v.astype(np.float32)


def _real_space_projection(vol: np.ndarray, rot: float, tilt: float, psi: float) -> np.ndarray:
    """image(x, y) = Σ_z V(Aᵀ (x, y, z)) by trilinear sampling on a half-pixel z grid (RELION's definition)."""
    d = vol.shape[0]
    c = d // 2
    g = np.arange(d) - c
    gz = np.arange(-2 * d, 2 * d + 1) * 0.5
    z, y, x = np.meshgrid(gz, g, g, indexing="ij")
    xyz = np.stack([x.ravel(), y.ravel(), z.ravel()])
    src = euler_to_matrix(rot, tilt, psi).T @ xyz
    vals = map_coordinates(vol, [src[2] + c, src[1] + c, src[0] + c], order=1, cval=0.0)
    return vals.reshape(len(gz), d, d).sum(0) * 0.5


def test_euler_matrices_are_rotations_and_invert():
    rng = np.random.default_rng(1)
    rot, tilt, psi = random_euler_angles(500, rng)
    a = euler_to_matrix(rot, tilt, psi)
    assert np.allclose(a @ a.transpose(0, 2, 1), np.eye(3), atol=1e-12)
    assert np.allclose(np.linalg.det(a), 1.0)
    assert np.allclose(euler_to_matrix(*matrix_to_euler(a)), a, atol=1e-10)
    # RELION: A(rot, 0, 0) is Rz(rot) acting as x' = cos·x + sin·y
    r = euler_to_matrix(30.0, 0.0, 0.0)
    assert np.allclose(r[0], [np.cos(np.pi / 6), np.sin(np.pi / 6), 0.0])
    # gimbal lock at tilt 0 and 180 still round-trips
    for t in (0.0, 180.0):
        m = euler_to_matrix(40.0, t, 70.0)
        assert np.allclose(euler_to_matrix(*matrix_to_euler(m)), m, atol=1e-10)


def test_random_orientations_are_so3_uniform():
    rng = np.random.default_rng(2)
    rot, tilt, psi = random_euler_angles(20000, rng)
    # viewing directions (third row of A) uniform on the sphere: each component has mean 0, var 1/3
    view = euler_to_matrix(rot, tilt, psi)[:, 2, :]
    assert np.all(np.abs(view.mean(0)) < 0.02)
    assert np.allclose(view.var(0), 1 / 3, atol=0.02)
    # cos(tilt) is uniform on [-1, 1]
    hist, _ = np.histogram(np.cos(np.deg2rad(tilt)), bins=10, range=(-1, 1))
    assert hist.min() > 0.9 * 2000 and hist.max() < 1.1 * 2000


def test_projection_along_z_equals_real_space_sum():
    vol = _blob_volume(32)
    proj = project(vol, [0.0], [0.0], [0.0])[0]
    direct = vol.sum(0)
    assert np.corrcoef(proj.ravel(), direct.ravel())[0, 1] > 0.999
    assert np.abs(proj - direct).max() < 0.03 * np.abs(direct).max()  # stated tolerance: 3 % of the peak


@pytest.mark.parametrize("d", [32, 33])
def test_projection_matches_real_space_at_general_poses(d):
    vol = _blob_volume(d, seed=d)
    poses = [(30.0, 60.0, -20.0), (200.0, 120.0, 75.0)]
    imgs = project(vol, *np.array(poses).T)
    for img, pose in zip(imgs, poses):
        ref = _real_space_projection(vol, *pose)
        assert np.corrcoef(img.ravel(), ref.ravel())[0, 1] > 0.999
        assert np.abs(img - ref).max() < 0.03 * np.abs(ref).max()


def test_origin_shifts_move_the_centre_by_minus_origin():
    vol = _blob_volume(32)
    base = project(vol, [10.0], [50.0], [80.0])[0]
    apix = 2.0
    shifted = project(vol, [10.0], [50.0], [80.0], shifts_A=np.array([[4.0, -6.0]]), apix=apix)[0]
    # origin (+2 px, −3 px) puts the particle centre at box//2 − origin: content moves by (−2, +3)
    assert np.allclose(shifted, np.roll(base, (3, -2), axis=(0, 1)), atol=1e-3 * np.abs(base).max())


@pytest.mark.parametrize("name", ["centered", "shifted"])
def test_reproduces_relion_project(shared_data, name):
    from cryomap.io.mrc import read_map, read_stack
    from cryomap.io.star import read_star

    vol = read_map(shared_data / "maps" / "70S_ribosome_65px.mrc", apix=1.0).data
    table = read_star(shared_data / "relion_projections" / f"rln_proj_65_{name}.star").particles
    ref = read_stack(shared_data / "relion_projections" / f"rln_proj_65_{name}.mrcs", apix=1.0, mmap=False).data
    apix = 1.0
    # relion_project writes pixel origins (rlnOriginX/Y) even in a 3.1 file: the reader turns them into Å
    assert "rlnOriginX" not in table
    shifts = table[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy(float)
    args = (vol, table.rlnAngleRot, table.rlnAngleTilt, table.rlnAnglePsi, shifts, apix)
    ours = project(*args, centre="relion_project")
    for a, b in zip(ours, ref):
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.99
    assert np.allclose(ours.std(axis=(1, 2)) / ref.std(axis=(1, 2)), 1.0, atol=0.02)  # same scale (line integrals)
    # the default centre (box//2, RELION's extraction centre) differs from relion_project's odd-box
    # output by exactly one pixel on each axis
    default = project(*args)
    for a, b in zip(default, ref):
        assert np.corrcoef(np.roll(a, (1, 1), axis=(0, 1)).ravel(), b.ravel())[0, 1] > 0.99
