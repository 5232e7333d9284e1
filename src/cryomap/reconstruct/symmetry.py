"""Point-group symmetry named as RELION names it: C_n, D_n, T, O, I (= I2), I1–I4.

The operators follow RELION's ``symmetries.cpp`` definitions (its ``rot_axis`` generators), so a
map reconstructed here with ``D2`` has its axes where RELION puts them:

* ``Cn``: n-fold axis along z.
* ``Dn``: n-fold along z, a 2-fold along x.
* ``T``: 3-fold along z, 2-fold along (0, 0.816496, 0.577350).
* ``O``: 3-fold along (1, 1, 1)/√3, 4-fold along z.
* ``I1``: 2-fold x, 5-fold (0.850651, 0, −0.525731), 3-fold (0.934172, 0.356822, 0).
* ``I2`` (and ``I``, RELION's default setting): 2-fold z, 5-fold (0.525731, 0, 0.850651),
  3-fold (0, 0.356822, 0.934172).
* ``I3``: 2-fold (−0.525731, 0, 0.850651), 5-fold z, 3-fold (−0.491123, 0.356822, 0.794654).
* ``I4``: 2-fold (0.525731, 0, 0.850651), 5-fold (0.894427, 0, 0.447214), 3-fold (0.491123, 0.356822, 0.794654).

The group is the closure of the generators; tests/test_reconstruct_symmetry.py checks each set
against ``relion_refine --sym X --print_symmetry_ops`` where RELION is installed. Groups with
mirrors (CnV, CnH, Sn, DnV, DnH, TD, TH, OH, IH) are refused: a map of a chiral molecule has none.

Matrices act on (x, y, z) column vectors; a map V is symmetric when ``V(g·r) = V(r)`` for every
``g``. Symmetrising Fourier accumulators (:func:`symmetrise_grid`) follows RELION's
``BackProjector::symmetrise``: the data and weight grids are summed over ``g`` at rotated
coordinates (trilinear), before the division, so every image counts once per operator.
"""

from __future__ import annotations

import re

import numpy as np
import torch

from cryomap.errors import BadInputError

_GENERATORS: dict[str, list[tuple[int, tuple[float, float, float]]]] = {
    "T": [(3, (0.0, 0.0, 1.0)), (2, (0.0, 0.816496, 0.577350))],
    "O": [(3, (0.5773502, 0.5773502, 0.5773502)), (4, (0.0, 0.0, 1.0))],
    "I1": [(2, (1.0, 0.0, 0.0)), (5, (0.85065080702670, 0.0, -0.5257311142635)), (3, (0.9341723640, 0.3568220765, 0.0))],
    "I2": [(2, (0.0, 0.0, 1.0)), (5, (0.525731112119, 0.0, 0.850650808354)), (3, (0.0, 0.356822089773, 0.934172358963))],
    "I3": [(2, (-0.5257311143, 0.0, 0.8506508070)), (5, (0.0, 0.0, 1.0)), (3, (-0.4911234732, 0.3568220765, 0.7946544723))],
    "I4": [(2, (0.5257311143, 0.0, 0.8506508070)), (5, (0.8944271932, 0.0, 0.4472135909)), (3, (0.4911234732, 0.3568220765, 0.7946544723))],
}
_EXPECTED_ORDER = {"T": 12, "O": 24, "I1": 60, "I2": 60, "I3": 60, "I4": 60}


def _axis_rotation(fold: int, axis: tuple[float, float, float]) -> np.ndarray:
    """Rotation by 360°/fold about ``axis`` (Rodrigues)."""
    a = np.asarray(axis, dtype=np.float64)
    a = a / np.linalg.norm(a)
    t = 2.0 * np.pi / fold
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * (k @ k)


def _closure(generators: list[np.ndarray], limit: int = 200) -> np.ndarray:
    ops = [np.eye(3)]
    frontier = [np.eye(3)]
    while frontier:
        new = []
        for m in frontier:
            for g in generators:
                p = g @ m
                if not any(np.abs(p - q).max() < 1e-4 for q in ops):
                    ops.append(p)
                    new.append(p)
        frontier = new
        if len(ops) > limit:
            raise ValueError("symmetry generators do not close into a finite group")
    return np.array(ops)


def canonical_name(name: str) -> str:
    """``"c4"`` → ``"C4"``, ``"I"`` → ``"I2"``; raises :class:`BadInputError` for a name RELION would not know here."""
    s = str(name).strip().upper()
    if s == "I":
        return "I2"
    if re.fullmatch(r"[CD][1-9][0-9]*", s) or s in _GENERATORS:
        return s
    if re.fullmatch(r"(C[1-9][0-9]*[VH]|S[1-9][0-9]*|D[1-9][0-9]*[VH]|TD|TH|OH|IH|I[1-5]H)", s):
        raise BadInputError(f"symmetry {name!r} contains mirror operations, which a map of a chiral molecule "
                            "cannot have; use its rotation group (C_n, D_n, T, O or I)")
    raise BadInputError(f"unknown symmetry {name!r}: use C1, Cn, Dn, T, O, I or I1–I4 (RELION's names)")


def symmetry_operators(name: str) -> np.ndarray:
    """The rotation matrices (G, 3, 3) of point group ``name`` (RELION's conventions; identity first)."""
    s = canonical_name(name)
    if s[0] in "CD" and s[1:].isdigit():
        n = int(s[1:])
        gens = [_axis_rotation(n, (0.0, 0.0, 1.0))] if n > 1 else []
        if s[0] == "D":
            gens.append(_axis_rotation(2, (1.0, 0.0, 0.0)))
        ops = _closure(gens) if gens else np.eye(3)[None]
        expected = n * (2 if s[0] == "D" else 1)
    else:
        ops = _closure([_axis_rotation(f, ax) for f, ax in _GENERATORS[s]])
        expected = _EXPECTED_ORDER[s]
    if len(ops) != expected:  # pragma: no cover - a wrong generator table
        raise RuntimeError(f"symmetry {s}: {len(ops)} operators, expected {expected}")
    return ops


def symmetrise_grid(grids: torch.Tensor, operators: np.ndarray) -> torch.Tensor:
    """Sum ``grids`` (C, L, L, L), full 3D DFT-domain arrays in FFT order (z, y, x), over the operators.

    ``out(k) = Σ_g in(g·k)`` with trilinear interpolation at the rotated frequency (k in voxels
    about 0); the identity is exact. Used on the numerator (real and imaginary parts) and the
    weight before their ratio is taken. Samples rotated beyond the grid are dropped.
    """
    ops = np.asarray(operators, dtype=np.float64)
    if len(ops) == 1:
        return grids
    L = grids.shape[-1]
    shifted = torch.fft.fftshift(grids, dim=(-3, -2, -1))[None]  # k = 0 at voxel L//2
    ax = torch.arange(L, dtype=torch.float32, device=grids.device) - L // 2
    z, y, x = torch.meshgrid(ax, ax, ax, indexing="ij")
    xyz = torch.stack([x, y, z], -1).reshape(-1, 3)
    out = shifted[0].clone()
    for g in ops[1:]:
        src = xyz @ torch.as_tensor(g.T, dtype=torch.float32, device=grids.device)  # g·k as row vectors
        norm = ((src + L // 2) * (2.0 / (L - 1)) - 1.0).reshape(1, L, L, L, 3)
        out += torch.nn.functional.grid_sample(shifted, norm, mode="bilinear", padding_mode="zeros",
                                               align_corners=True)[0]
    return torch.fft.ifftshift(out, dim=(-3, -2, -1))


def symmetrise_map(volume: np.ndarray, operators: np.ndarray) -> np.ndarray:
    """The real-space average ``(1/G) Σ_g V(g·r)`` of a cubic map (z, y, x) about voxel ``box // 2`` (trilinear)."""
    vol = torch.as_tensor(np.asarray(volume, dtype=np.float32))
    d = vol.shape[-1]
    ax = torch.arange(d, dtype=torch.float32) - d // 2
    z, y, x = torch.meshgrid(ax, ax, ax, indexing="ij")
    xyz = torch.stack([x, y, z], -1).reshape(-1, 3)
    acc = torch.zeros_like(vol)
    for g in np.asarray(operators, dtype=np.float64):
        src = xyz @ torch.as_tensor(g.T, dtype=torch.float32)
        norm = ((src + d // 2) * (2.0 / (d - 1)) - 1.0).reshape(1, d, d, d, 3)
        acc += torch.nn.functional.grid_sample(vol[None, None], norm, mode="bilinear", padding_mode="zeros",
                                               align_corners=True)[0, 0]
    return (acc / len(operators)).numpy()
