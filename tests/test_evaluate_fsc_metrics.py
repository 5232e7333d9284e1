"""FSC and real-space metrics against analytic values (issue 6)."""

from __future__ import annotations

import numpy as np
import pytest

from cryomap.evaluate.fsc import fsc, masked_fsc, resolution_at, shell_index_grid
from cryomap.evaluate.metrics import (
    contour_for_volume,
    cross_correlation,
    cross_correlation_about_mean,
    dice,
    iou,
    map_metrics,
    ssim3d,
)

D = 40
APIX = 1.5


@pytest.fixture(scope="module")
def noise_map() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(D, D, D))


def _hard_low_pass(volume: np.ndarray, radius_shells: float) -> np.ndarray:
    """Keep Fourier voxels with |k|*D < radius (full FFT), zero the rest."""
    f = np.fft.fftfreq(D) * D
    r = np.sqrt(f[:, None, None] ** 2 + f[None, :, None] ** 2 + f[None, None, :] ** 2)
    return np.fft.ifftn(np.fft.fftn(volume) * (r < radius_shells)).real


def test_fsc_of_map_with_itself_is_one_everywhere(noise_map):
    c = fsc(noise_map, noise_map, APIX)
    assert len(c.fsc) == D // 2 + 1
    np.testing.assert_allclose(c.fsc, 1.0, atol=1e-9)
    assert not c.crossed(0.143)
    assert c.resolution(0.143) == pytest.approx(2 * APIX)  # never crosses: reported at Nyquist


@pytest.mark.parametrize("radius", [6.5, 10.5, 14.5])
def test_fsc_with_hard_low_pass_crosses_0143_at_the_cut(noise_map, radius):
    c = fsc(noise_map, _hard_low_pass(noise_map, radius), APIX)
    res = c.resolution(0.143)
    crossing_shell = D * APIX / res  # shell units: frequency * D * apix
    assert abs(crossing_shell - radius) <= 1.0, (crossing_shell, radius)
    # well inside the pass band the maps agree exactly, well beyond it they are unrelated
    assert np.all(c.fsc[: int(radius) - 1] > 0.999)
    assert np.all(np.abs(c.fsc[int(radius) + 3 :]) < 0.2)


def test_fsc_of_independent_noise_is_near_zero(noise_map):
    other = np.random.default_rng(1).normal(size=(D, D, D))
    c = fsc(noise_map, other, APIX)
    bound = 3.0 / np.sqrt(c.n_voxels[1:])
    assert np.all(np.abs(c.fsc[1:]) < bound), np.max(np.abs(c.fsc[1:]) / bound)
    # the shell voxel counts add up to the whole (full) transform inside the Nyquist sphere
    idx = shell_index_grid(D)
    assert c.n_voxels.sum() == np.count_nonzero(idx <= D // 2)


def test_resolution_interpolates_linearly_between_shells():
    freq = np.array([0.0, 0.1, 0.2, 0.3])
    curve = np.array([1.0, 0.8, 0.2, 0.0])
    res, crossed = resolution_at(freq, curve, 0.5)
    assert crossed and res == pytest.approx(1 / 0.15)
    res, crossed = resolution_at(freq, np.array([1.0, 0.9, 0.8, 0.7]), 0.5)
    assert not crossed and res == pytest.approx(1 / 0.3)


def test_masked_fsc_phase_randomisation_removes_mask_correlation(noise_map):
    """Two independent noise maps under one sharp mask correlate only through the mask; the corrected FSC removes that."""
    from cryomap.evaluate.mask import spherical_mask

    other = np.random.default_rng(2).normal(size=(D, D, D))
    signal = _hard_low_pass(np.random.default_rng(3).normal(size=(D, D, D)), 4.5) * 6
    a, b = signal + noise_map, signal + other
    mask = spherical_mask(D, 10, soft_px=0.5)
    c = masked_fsc(a, b, mask, APIX)
    beyond = np.arange(len(c.fsc)) > c.randomize_from_shell + 2
    # the masked FSC of pure noise shells is inflated by the mask's convolution; the corrected one is not
    assert np.mean(c.extra["fsc_masked"][beyond]) > np.mean(c.fsc[beyond])
    assert abs(np.mean(c.fsc[beyond])) < 0.05


def test_cc_definitions():
    rng = np.random.default_rng(4)
    a = rng.normal(size=(8, 8, 8)) + 3.0
    assert cross_correlation(a, 2 * a) == pytest.approx(1.0)
    assert cross_correlation_about_mean(a, -a + 7) == pytest.approx(-1.0)
    assert cross_correlation_about_mean(a, a) == pytest.approx(np.corrcoef(a.ravel(), a.ravel())[0, 1])
    b = rng.normal(size=a.shape)
    assert cross_correlation_about_mean(a, b) == pytest.approx(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def test_dice_iou_on_hand_made_boxes():
    a = np.zeros((20, 20, 20), bool)
    b = np.zeros_like(a)
    a[2:12, 2:12, 2:12] = True  # 1000 voxels
    b[7:17, 2:12, 2:12] = True  # 1000 voxels, overlap 5*10*10 = 500
    assert dice(a, b) == pytest.approx(2 * 500 / 2000)
    assert iou(a, b) == pytest.approx(500 / 1500)
    assert dice(a, a) == 1.0 and iou(a, ~a) == 0.0


def test_dice_iou_on_concentric_spheres():
    z, y, x = np.mgrid[:40, :40, :40] - 20
    r = np.sqrt(x**2 + y**2 + z**2)
    big, small = r <= 12, r <= 6
    n_big, n_small = big.sum(), small.sum()
    assert dice(big, small) == pytest.approx(2 * n_small / (n_big + n_small))
    assert iou(big, small) == pytest.approx(n_small / n_big)
    # analytic sphere volumes, within the voxelisation error
    assert iou(big, small) == pytest.approx((6 / 12) ** 3, rel=0.1)


def test_map_metrics_contours():
    z, y, x = np.mgrid[:24, :24, :24] - 12
    truth = np.exp(-(x**2 + y**2 + z**2) / (2 * 4.0**2))
    m = map_metrics(3 * truth, truth, contour=0.5)
    assert m["cc_mean"] == pytest.approx(1.0)
    assert m["dice"] < 1.0  # the scaled map is bigger at the same contour ...
    assert m["dice_equal_volume"] == pytest.approx(1.0)  # ... but identical at equal volume
    assert contour_for_volume(truth, int((truth >= 0.5).sum())) == pytest.approx(truth[truth >= 0.5].min())
    assert ssim3d(truth, truth) == pytest.approx(1.0)
    assert ssim3d(truth, np.random.default_rng(0).normal(size=truth.shape)) < 0.2


def test_hard_shell_fsc_agrees_with_torch_fourier_shell_correlation_on_a_smooth_curve():
    """Away from sharp edges the hard-shell FSC matches teamtomo's interpolated-shell FSC."""
    import torch
    from torch_fourier_shell_correlation import fourier_shell_correlation

    from cryomap.evaluate.filters import low_pass

    rng = np.random.default_rng(5)
    signal = low_pass(rng.normal(size=(D, D, D)).astype(np.float32), 1.0, 4.0, falloff_shells=8) * 5
    a, b = signal + rng.normal(size=signal.shape), signal + rng.normal(size=signal.shape)
    ours = fsc(a, b, 1.0).fsc
    theirs = fourier_shell_correlation(torch.as_tensor(a), torch.as_tensor(b)).numpy()
    np.testing.assert_allclose(ours, theirs, atol=0.08)
