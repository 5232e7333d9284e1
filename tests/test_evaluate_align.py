"""Global alignment recovers a known rotation and the hand (issue 6)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from cryomap.evaluate.align import align_maps, apply_alignment, transform_map
from cryomap.evaluate.metrics import cross_correlation_about_mean

D = 32
MIRROR = np.diag([1.0, 1.0, -1.0])  # the hand flip mirrors z


def _asymmetric_map(seed: int = 0) -> np.ndarray:
    """Eight Gaussian blobs of different sizes and weights: no symmetry, a definite hand."""
    rng = np.random.default_rng(seed)
    c = D // 2
    z, y, x = np.mgrid[:D, :D, :D].astype(float)
    v = np.zeros((D, D, D))
    for _ in range(8):
        p = rng.uniform(-D / 4, D / 4, 3)
        s = rng.uniform(1.5, 3.0)
        v += rng.uniform(0.5, 1.5) * np.exp(-((x - c - p[0]) ** 2 + (y - c - p[1]) ** 2 + (z - c - p[2]) ** 2) / (2 * s * s))
    return v.astype(np.float32)


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    return _asymmetric_map()


def _angle_deg(matrix: np.ndarray) -> float:
    return float(np.degrees(Rotation.from_matrix(matrix).magnitude()))


def test_recovers_known_rotation_and_shift(reference):
    rot = Rotation.from_euler("ZYZ", [37.0, 71.0, -122.0], degrees=True).as_matrix()
    moved = transform_map(reference, rot, shift_px=(2.0, -1.0, 3.0))
    assert cross_correlation_about_mean(moved, reference) < 0.5  # really moved
    al = align_maps(moved, reference)
    assert not al.flipped
    # the found rotation undoes the applied one: R_found @ R_applied = identity
    assert _angle_deg(al.rotation @ rot) < 3.0
    back = apply_alignment(moved, al)
    assert cross_correlation_about_mean(back, reference) > 0.97
    assert al.score > al.score_other_hand


def test_detects_flipped_hand(reference):
    rot = Rotation.from_euler("ZYZ", [-60.0, 120.0, 15.0], degrees=True).as_matrix()
    mirrored = transform_map(reference, rot, flipped=True)  # rotate(mirror(ref))
    al = align_maps(mirrored, reference)
    assert al.flipped
    # mirror(rotate(mirror(ref))) = (M R M) ref, so the found rotation inverts M R M
    assert _angle_deg(al.rotation @ MIRROR @ rot @ MIRROR) < 3.0
    assert cross_correlation_about_mean(apply_alignment(mirrored, al), reference) > 0.97
    d = al.to_dict()
    assert d["hand_flipped"] is True and len(d["rotation_euler_zyz_deg"]) == 3
