"""Direct Fourier reconstruction: the physics round trip (project → reconstruct → FSC), through the engine of issue 16."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch_fourier_shell_correlation import fsc

from cryomap.reconstruct.backproject import half_set_reconstructions, reconstruct
from cryomap.core.euler import random_euler_angles
from cryomap.core.ctf import CtfParams, apply_ctf
from cryomap.core.projector import project
from cryomap.simulate.structure_map import structure_to_map

APIX = 2.5


def _fsc(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return fsc(torch.as_tensor(a), torch.as_tensor(b)).numpy()


@pytest.fixture(scope="module")
def truth_and_particles():
    truth = structure_to_map("1BHL", APIX, 32).data
    rng = np.random.default_rng(0)
    n = 600
    rot, tilt, psi = random_euler_angles(n, rng)
    shifts = rng.uniform(-2, 2, (n, 2)) * APIX  # RELION origins in Å
    images = project(truth, rot, tilt, psi, shifts, APIX)
    return truth, images, rot, tilt, psi, shifts


def test_backprojection_round_trip_fsc(truth_and_particles):
    truth, images, rot, tilt, psi, shifts = truth_and_particles
    rec = reconstruct(images, rot, tilt, psi, shifts, APIX)
    curve = _fsc(rec, truth)
    nyquist = len(curve) - 1
    two_thirds = int(np.ceil(2 * nyquist / 3))
    assert np.all(curve[: two_thirds + 1] > 0.5)
    assert np.corrcoef(rec.ravel(), truth.ravel())[0, 1] > 0.98
    assert rec.std() / truth.std() == pytest.approx(1.0, abs=0.1)  # same scale as the map
    # ignoring the origins breaks it: the shifts are undone, not ignored
    unshifted = reconstruct(images, rot, tilt, psi, None, APIX)
    assert _fsc(unshifted, truth)[two_thirds] < 0.5


def test_odd_box_round_trip():
    truth = structure_to_map("1BHL", APIX, 33).data
    rng = np.random.default_rng(1)
    rot, tilt, psi = random_euler_angles(300, rng)
    rec = reconstruct(project(truth, rot, tilt, psi), rot, tilt, psi, None, APIX)
    assert np.corrcoef(rec.ravel(), truth.ravel())[0, 1] > 0.98


def test_wiener_ctf_correction_beats_ignoring_the_ctf(truth_and_particles):
    truth, images, rot, tilt, psi, shifts = (a[:300] if i else a for i, a in enumerate(truth_and_particles))
    n = len(images)
    rng = np.random.default_rng(2)
    du = rng.uniform(8000, 20000, n)
    ctf = CtfParams(du, du - 300, rng.uniform(-180, 180, n))
    modulated = apply_ctf(images, ctf, APIX)
    corrected = reconstruct(modulated, rot, tilt, psi, shifts, APIX, ctf=ctf)
    ignored = reconstruct(modulated, rot, tilt, psi, shifts, APIX)
    cc_corrected = np.corrcoef(corrected.ravel(), truth.ravel())[0, 1]
    cc_ignored = np.corrcoef(ignored.ravel(), truth.ravel())[0, 1]
    assert cc_corrected > 0.95 and cc_corrected > cc_ignored + 0.1
    curve = _fsc(corrected, truth)
    assert np.all(curve[: (len(curve) - 1) // 2] > 0.5)


def test_half_sets_are_independent_and_agree(truth_and_particles):
    truth, images, rot, tilt, psi, shifts = truth_and_particles
    rng = np.random.default_rng(3)
    noisy = images + rng.normal(0, images.std() * 2, images.shape).astype(np.float32)
    h1, h2 = half_set_reconstructions(noisy, rot, tilt, psi, shifts, APIX, seed=0)
    assert not np.allclose(h1, h2)
    curve = _fsc(h1, h2)
    assert curve[1] > 0.9 and curve[-1] < curve[1]  # agree at low resolution, noise decorrelates high


def test_two_threads_give_the_same_bytes_as_one(truth_and_particles):
    """The half sets summed at once in two threads (the CLI's default) equal one thread summing them in turn."""
    from cryomap.reconstruct.backproject import backproject_arrays

    truth, images, rot, tilt, psi, shifts = truth_and_particles
    rng = np.random.default_rng(4)
    du = rng.uniform(8000, 20000, len(images))
    ctf = CtfParams(du, du - 300, rng.uniform(-180, 180, len(images)))
    images = apply_ctf(images, ctf, APIX)
    one = backproject_arrays(images, rot, tilt, psi, shifts, APIX, ctf, threads=1, batch_size=32)
    two = backproject_arrays(images, rot, tilt, psi, shifts, APIX, ctf, threads=2, batch_size=32)
    for a, b in ((one.half1, two.half1), (one.half2, two.half2), (one.full, two.full)):
        assert np.array_equal(a, b)
    assert one.n_per_half == two.n_per_half == (300, 300)
    assert np.corrcoef(one.full.ravel(), truth.ravel())[0, 1] > 0.95  # and it is the map, not zeros


def test_simulated_dataset_clean_particles_reconstruct_the_truth_map(tmp_path):
    """Issue 3's round trip on the files ``simulate`` writes: clean/particles.mrcs + clean/particles.star
    (true poses and origins) back-projected give maps/<id>_truth.mrc, FSC > 0.5 to ≥ 2/3 Nyquist."""
    from cryomap.io.mrc import read_map, read_stack
    from cryomap.io.star import read_star
    from cryomap.simulate.dataset import simulate_dataset

    target = simulate_dataset(["1BHL"], tmp_path / "sim", n_particles=500, micrograph_size=512, apix=APIX,
                              seed=2, progress=False)[0]
    truth = read_map(target / "maps" / "1BHL_truth.mrc")
    star = read_star(target / "clean" / "particles.star").particles
    stack = read_stack(target / "clean" / "particles.mrcs")
    assert stack.apix == pytest.approx(truth.apix)
    origins = star[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy(float)
    assert np.abs(origins).max() > 0.2 * APIX  # the origins are not all zero: they must be undone
    rec = reconstruct(stack.data, star.rlnAngleRot, star.rlnAngleTilt, star.rlnAnglePsi, origins, stack.apix)
    curve = _fsc(rec, truth.data)
    nyquist = len(curve) - 1
    assert np.all(curve[: int(np.ceil(2 * nyquist / 3)) + 1] > 0.5), curve
    assert np.corrcoef(rec.ravel(), truth.data.ravel())[0, 1] > 0.98
