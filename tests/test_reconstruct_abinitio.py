"""Ab initio from unposed particles and gold-standard refinement converge on a small simulated case (issue 16)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from cryomap.core.ctf import CtfParams, apply_ctf
from cryomap.core.euler import euler_to_matrix, matrix_to_euler, random_euler_angles
from cryomap.core.projector import project
from cryomap.particles.source import ParticleSource
from cryomap.reconstruct.compare import pose_errors

BOX, APIX = 32, 5.0


def _molecule(box: int) -> np.ndarray:
    """Asymmetric blobs of several sizes (a definite hand, no symmetry)."""
    rng = np.random.default_rng(7)
    z, y, x = (np.mgrid[:box, :box, :box] - box // 2).astype(np.float32)
    v = np.zeros((box,) * 3, np.float32)
    for _ in range(9):
        c = rng.uniform(-box / 5, box / 5, 3)
        s = rng.uniform(1.3, 2.6)
        v += rng.uniform(0.5, 1.5) * np.exp(-((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) / (2 * s**2))
    return v


def _particles(n: int, snr: float, seed: int = 0):
    import pandas as pd

    truth = _molecule(BOX)
    rng = np.random.default_rng(seed)
    rot, tilt, psi = random_euler_angles(n, rng)
    du = rng.uniform(1.0e4, 2.5e4, n)
    ctf = CtfParams(du, du, np.zeros(n))
    images = apply_ctf(project(truth, rot, tilt, psi, apix=APIX), ctf, APIX, out_size=2 * BOX)
    o = BOX - BOX // 2
    images = images[:, o:o + BOX, o:o + BOX]
    images = images + rng.normal(0, images.std() / np.sqrt(snr), images.shape).astype(np.float32)
    table = pd.DataFrame({"rlnDefocusU": du, "rlnDefocusV": du, "rlnDefocusAngle": 0.0, "rlnVoltage": 300.0,
                          "rlnSphericalAberration": 2.7, "rlnAmplitudeContrast": 0.1})
    return truth, ParticleSource.from_arrays(images, APIX, table), euler_to_matrix(rot, tilt, psi)


@pytest.mark.slow  # ~20 s of CPU: a convergence test from random starts cannot be much smaller
def test_abinitio_finds_the_structure_and_the_poses():
    from cryomap.evaluate.align import align_maps, apply_alignment
    from cryomap.reconstruct.abinitio import AbinitioSettings, abinitio

    truth, src, true_a = _particles(300, snr=5.0)
    res = abinitio(src, AbinitioSettings(box=20, iterations=12, batch_size=60, restarts=1, final_passes=1, top_k=1,
                                         initial_resolution_A=40.0, max_shift_A=0.0))
    err = pose_errors(euler_to_matrix(res.rot, res.tilt, res.psi), true_a)
    assert err.median < 15.0, err.median  # a random map would be ~100° off; the grid here is 15° → 3.75°
    al = align_maps(res.reconstruction.full, truth)
    moved = apply_alignment(res.reconstruction.full, al)
    assert np.corrcoef(moved.ravel(), truth.ravel())[0, 1] > 0.85
    assert [line.stage for line in res.log][-1] == "final" and res.log[-1].half_set_fsc0143_A is not None


def test_refine_improves_perturbed_poses():
    import pandas as pd

    from cryomap.reconstruct.maps import lowpass
    from cryomap.reconstruct.refine import RefineSettings, refine

    truth, src, true_a = _particles(500, snr=1.0, seed=1)
    rng = np.random.default_rng(2)
    noisy = Rotation.from_rotvec(rng.normal(0, np.radians(8.0) / np.sqrt(3), (len(true_a), 3))).as_matrix()
    start = true_a @ noisy
    rot, tilt, psi = matrix_to_euler(start)
    table = src.table.assign(rlnAngleRot=rot, rlnAngleTilt=tilt, rlnAnglePsi=psi, rlnOriginXAngst=0.0,
                             rlnOriginYAngst=0.0)
    posed = ParticleSource.from_arrays(src.images(), APIX, pd.DataFrame(table))
    before = pose_errors(start, true_a).median
    ref = lowpass(truth, BOX * APIX / 25.0) * 3.0  # 25 Å and on another intensity scale
    res = refine(posed, ref, APIX, RefineSettings(iterations=4, step_deg=3.75, min_step_deg=0.5))
    after = pose_errors(euler_to_matrix(res.rot, res.tilt, res.psi), true_a).median
    assert after < 0.6 * before, (before, after)
    assert 2 * APIX <= res.resolution < 6 * APIX
    assert set(np.unique(res.sets)) == {0, 1}
    assert res.fsc_masked.fsc[1] > 0.9
