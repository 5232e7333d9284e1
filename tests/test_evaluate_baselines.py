"""Baselines: low-passed truth crosses FSC 0.143 at its resolution; the oracle from a STAR recovers the map (issue 6)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cryomap.evaluate.baselines import mean_label, oracle_reconstruction, scale_to, truth_low_passed
from cryomap.particles.source import open_particles
from cryomap.evaluate.fsc import fsc
from cryomap.io.mrc import write_mrc
from cryomap.io.star import format_image_name, write_star


def _blobs(box: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    z, y, x = (np.mgrid[:box, :box, :box] - box // 2).astype(np.float32)
    v = np.zeros((box,) * 3, np.float32)
    for _ in range(8):
        p = rng.uniform(-box / 5, box / 5, 3)
        v += np.exp(-((x - p[0]) ** 2 + (y - p[1]) ** 2 + (z - p[2]) ** 2) / (2 * 1.5**2)).astype(np.float32)
    return v


@pytest.mark.parametrize("apix", [2.0, 3.0])
def test_truth_low_passed_crosses_0143_at_its_resolution(apix):
    box = 40
    truth = np.random.default_rng(0).normal(size=(box, box, box)).astype(np.float32)
    for name, m in truth_low_passed(truth, apix).items():
        res = float(name.split()[1])
        if res <= 2 * apix:
            continue
        crossing = fsc(m, truth, apix).resolution(0.143)
        assert abs(1 / crossing - 1 / res) <= 1 / (box * apix), (name, crossing)


def test_mean_label_and_scale():
    a, b = np.zeros((4, 4, 4)), np.ones((4, 4, 4))
    np.testing.assert_allclose(mean_label([a, b]), 0.5)
    v = np.random.default_rng(1).normal(size=(6, 6, 6))
    np.testing.assert_allclose(scale_to(v, 3 * v + 2), v, atol=1e-5)


def test_oracle_from_a_star_file_recovers_the_map(tmp_path):
    """Clean projections at known poses, written as STAR + stack, backproject to the map (no CTF)."""
    from cryomap.core.euler import random_euler_angles
    from cryomap.core.projector import project

    box, apix, n = 32, 2.0, 300
    truth = _blobs(box)
    rot, tilt, psi = random_euler_angles(n, np.random.default_rng(2))
    images = project(truth, rot, tilt, psi, apix=apix)
    write_mrc(tmp_path / "p.mrcs", images, apix)
    df = pd.DataFrame({
        "rlnImageName": [format_image_name(i + 1, "p.mrcs") for i in range(n)],
        "rlnAngleRot": rot, "rlnAngleTilt": tilt, "rlnAnglePsi": psi,
        "rlnOriginXAngst": 0.0, "rlnOriginYAngst": 0.0,
        "rlnOpticsGroup": 1, "rlnImagePixelSize": apix, "rlnImageSize": box,
        "rlnVoltage": 300.0, "rlnSphericalAberration": 2.7, "rlnAmplitudeContrast": 0.1,
    })
    write_star(tmp_path / "p.star", df)
    ps = open_particles(tmp_path / "p.star")
    assert ps.shape == (n, box, box) and ps.pixel_size == pytest.approx(apix)
    maps = oracle_reconstruction(ps, half_sets=True)
    curve = fsc(maps["full"], truth, apix)
    assert curve.resolution(0.5) < 3 * 2 * apix  # FSC ≥ 0.5 to at least a third of Nyquist
    assert curve.fsc[1 : box // 6].min() > 0.9
    assert fsc(maps["half1"], maps["half2"], apix).fsc[1 : box // 6].min() > 0.8
