"""RELION Euler angles (ZYZ, degrees) ↔ rotation matrices, and SO(3)-uniform random poses.

RELION's convention (Heymann, Chagoyen & Belnap 2005, as in ``Euler_angles2matrix`` of
RELION's ``euler.cpp``): the matrix ``A(rot, tilt, psi) = Rz(psi) · Ry(tilt) · Rz(rot)`` maps
map coordinates (x, y, z) to image coordinates, and a projection is
``image(x, y) = Σ_z V(Aᵀ · (x, y, z))`` with x the fast axis. Matrices here act on column
vectors ordered (x, y, z).
"""

from __future__ import annotations

import numpy as np


def euler_to_matrix(rot: np.ndarray | float, tilt: np.ndarray | float, psi: np.ndarray | float) -> np.ndarray:
    """RELION rotation matrices ``A`` (…, 3, 3) for ZYZ Euler angles in degrees.

    Written out by hand (9 products) to follow RELION's ``Euler_angles2matrix`` term by term,
    which is what makes the convention checkable; scipy's ``Rotation.from_euler('ZYZ')`` gives
    the transpose and is easy to misuse.
    """
    a = np.deg2rad(np.asarray(rot, dtype=np.float64))
    b = np.deg2rad(np.asarray(tilt, dtype=np.float64))
    g = np.deg2rad(np.asarray(psi, dtype=np.float64))
    a, b, g = np.broadcast_arrays(a, b, g)
    ca, sa, cb, sb, cg, sg = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(g), np.sin(g)
    cc, cs, sc, ss = cb * ca, cb * sa, sb * ca, sb * sa
    m = np.empty(a.shape + (3, 3), dtype=np.float64)
    m[..., 0, 0] = cg * cc - sg * sa
    m[..., 0, 1] = cg * cs + sg * ca
    m[..., 0, 2] = -cg * sb
    m[..., 1, 0] = -sg * cc - cg * sa
    m[..., 1, 1] = -sg * cs + cg * ca
    m[..., 1, 2] = sg * sb
    m[..., 2, 0] = sc
    m[..., 2, 1] = ss
    m[..., 2, 2] = cb
    return m


def matrix_to_euler(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inverse of :func:`euler_to_matrix`: (rot, tilt, psi) in degrees, RELION's ``Euler_matrix2angles``.

    tilt lies in [0, 180]; at the gimbal lock (tilt ≈ 0 or 180) rot is set to 0 and psi
    carries the whole in-plane angle, as RELION does.
    """
    m = np.asarray(matrix, dtype=np.float64)
    abs_sb = np.sqrt(m[..., 0, 2] ** 2 + m[..., 1, 2] ** 2)
    tilt = np.arctan2(abs_sb, m[..., 2, 2])
    regular = abs_sb > 16 * np.finfo(np.float32).eps
    psi = np.where(regular, np.arctan2(m[..., 1, 2], -m[..., 0, 2]), 0.0)
    rot = np.where(regular, np.arctan2(m[..., 2, 1], m[..., 2, 0]), 0.0)
    # gimbal lock: tilt 0 gives A = Rz(psi + rot), tilt 180 gives A = Rz(psi - rot)·Ry(180);
    # put the whole in-plane angle into psi with rot = 0, as RELION does
    psi_lock = np.where(m[..., 2, 2] > 0, np.arctan2(-m[..., 1, 0], m[..., 0, 0]),
                        np.arctan2(m[..., 1, 0], -m[..., 0, 0]))
    psi = np.where(regular, psi, psi_lock)
    return np.rad2deg(rot), np.rad2deg(tilt), np.rad2deg(psi)


def random_euler_angles(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` SO(3)-uniform orientations as RELION (rot, tilt, psi) in degrees.

    Uniform on SO(3) means rot and psi uniform on [-180, 180) and cos(tilt) uniform on
    [-1, 1] (the Haar measure in ZYZ Euler angles is ∝ sin(tilt)).
    """
    rot = rng.uniform(-180.0, 180.0, n)
    tilt = np.rad2deg(np.arccos(rng.uniform(-1.0, 1.0, n)))
    psi = rng.uniform(-180.0, 180.0, n)
    return rot, tilt, psi
