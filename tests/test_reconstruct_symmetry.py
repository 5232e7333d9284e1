"""Point-group symmetry: RELION's operators, and a symmetric structure reconstructed with its symmetry (issue 16)."""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest

from cryomap.core.ctf import CtfParams, apply_ctf
from cryomap.core.euler import random_euler_angles
from cryomap.core.projector import project
from cryomap.errors import BadInputError
from cryomap.reconstruct.backproject import _fsc_shells, backproject_arrays
from cryomap.reconstruct.symmetry import canonical_name, symmetrise_map, symmetry_operators

GROUPS = {"C1": 1, "C2": 2, "C4": 4, "C7": 7, "D2": 4, "D3": 6, "T": 12, "O": 24, "I": 60, "I1": 60, "I3": 60, "I4": 60}


@pytest.mark.parametrize("name,order", list(GROUPS.items()))
def test_groups_are_closed_rotation_groups(name, order):
    ops = symmetry_operators(name)
    assert len(ops) == order
    assert np.allclose(ops @ ops.transpose(0, 2, 1), np.eye(3), atol=1e-6)
    assert np.allclose(np.linalg.det(ops), 1.0)
    prod = np.einsum("aij,bjk->abik", ops, ops).reshape(-1, 3, 3)  # closed under products
    assert all(np.abs(ops - p).max(axis=(1, 2)).min() < 1e-4 for p in prod)


def _relion_ops(name: str) -> np.ndarray:
    out = subprocess.run(["relion_refine", "--sym", name, "--print_symmetry_ops"], capture_output=True, text=True,
                         timeout=60).stdout.splitlines()
    mats = [np.array([[float(v) for v in out[i + j].split()] for j in (1, 2, 3)])
            for i, line in enumerate(out) if re.match(r"\s*R\(\d+\)=", line)]
    return np.array(mats)


@pytest.mark.skipif(shutil.which("relion_refine") is None, reason="RELION (relion_refine) is not installed")
@pytest.mark.parametrize("name", ["C4", "D2", "D3", "T", "O", "I", "I1", "I3", "I4"])
def test_operators_are_relions(name):
    ours, theirs = symmetry_operators(name), _relion_ops(name)
    assert len(ours) == len(theirs)
    assert all(np.abs(theirs - m).max(axis=(1, 2)).min() < 2e-3 for m in ours)


@pytest.mark.parametrize("bad", ["C0", "X2", "D2h", "C3v", "Oh", "I5x", ""])
def test_unknown_or_mirror_groups_are_one_line_errors(bad):
    with pytest.raises(BadInputError) as err:
        canonical_name(bad)
    assert "\n" not in str(err.value)


def _symmetric_truth(box: int, name: str, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    z, y, x = (np.mgrid[:box, :box, :box] - box // 2).astype(np.float32)
    v = np.zeros((box,) * 3, np.float32)
    for _ in range(5):
        c = rng.uniform(-box / 5, box / 5, 3)
        v += rng.uniform(0.5, 1.5) * np.exp(-((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) / (2 * 1.6**2))
    return symmetrise_map(v, symmetry_operators(name)).astype(np.float32)


@pytest.mark.parametrize("name", ["D2", "C4"])
def test_symmetric_structure_reconstructs_symmetric_and_better_than_c1(name):
    box, apix, n = 32, 3.0, 500
    truth = _symmetric_truth(box, name)
    ops = symmetry_operators(name)
    assert np.corrcoef(symmetrise_map(truth, ops).ravel(), truth.ravel())[0, 1] > 0.999  # the test object is symmetric
    rng = np.random.default_rng(1)
    rot, tilt, psi = random_euler_angles(n, rng)
    du = rng.uniform(1e4, 2.5e4, n)
    ctf = CtfParams(du, du, np.zeros(n))
    images = apply_ctf(project(truth, rot, tilt, psi), ctf, apix)
    images = images + rng.normal(0, images.std() / np.sqrt(0.3), images.shape).astype(np.float32)
    c1 = backproject_arrays(images, rot, tilt, psi, None, apix, ctf, symmetry="C1").full
    sym = backproject_arrays(images, rot, tilt, psi, None, apix, ctf, symmetry=name).full
    # the symmetrised reconstruction is its own symmetrised self (a C1 one is not)
    assert np.corrcoef(symmetrise_map(sym, ops).ravel(), sym.ravel())[0, 1] > 0.995
    assert np.corrcoef(symmetrise_map(c1, ops).ravel(), c1.ravel())[0, 1] < 0.99
    f_c1, f_sym = _fsc_shells(c1, truth), _fsc_shells(sym, truth)
    mid = slice(3, box // 2 - 2)
    assert f_sym[mid].mean() > f_c1[mid].mean() + 0.05, (f_sym, f_c1)
    assert np.all(f_sym[1:box // 2 - 3] >= f_c1[1:box // 2 - 3] - 0.01)
