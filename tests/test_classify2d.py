"""2D classification: polar-Fourier geometry against the projector, pose recovery, purity, ranking, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cryomap.classify2d.em import Classify2DParams, _make_aligner, classify
from cryomap.classify2d.engine import Aligner
from cryomap.classify2d.metrics import aligned_correlation, ceiling_assignments, class_correlations, purity
from cryomap.classify2d.polar import PolarGrid, soft_circular_mask, translation_grid
from cryomap.classify2d.rank import crossing_resolution, rank_order
from cryomap.classify2d.synthetic import simulate_views
from cryomap.errors import BadInputError
from cryomap.particles.source import ParticleSource


def _cc(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.ravel(a) - np.mean(a), np.ravel(b) - np.mean(b)
    return float(a @ b / np.sqrt((a @ a) * (b @ b)))


@pytest.fixture(scope="module")
def views_snr1() -> "object":
    """6 views of 7PBL, 20 particles each, 32 px at 6 Å/px, CTF, random psi, shifts ≤ 2 px, SNR 1."""
    return simulate_views("7PBL", n_views=6, per_view=20, box=32, apix=6.0, snr=1.0, max_shift_px=2.0, seed=1)


@pytest.fixture(scope="module")
def map_7pbl():
    """The built-in 7PBL at 4 Å/px in a 40 px box (128 Å across: 32 px)."""
    from cryomap.simulate.structure_map import structure_to_map

    return structure_to_map("7PBL", 4.0, 40).data


def test_polar_round_trip_and_band_limit(views_snr1):
    img = torch.as_tensor(views_snr1.clean[:1]) * soft_circular_mask(32, 14)
    g = PolarGrid(32, 15, 60)
    back = g.to_image(g.to_polar(img))
    assert _cc(back.numpy(), img.numpy()) > 0.995
    assert abs(float(back.sum()) - float(img.sum())) < 1e-3 * abs(float(img.sum())) + 1e-3  # the DC term survives


def test_rotation_and_shift_follow_relion_projections(map_7pbl):
    """Rotating the psi = 0 projection by the engine's ψ equals RELION's projection at rlnAnglePsi = −ψ,
    and the engine's back-shift by t undoes an origin of −t·apix."""
    from cryomap.core.projector import project

    rot, tilt, psi_rel, apix = 30.0, 70.0, 70.0, 4.0
    origin = np.array([[3.0 * apix, -2.0 * apix]])  # Å
    flat = project(map_7pbl, [rot], [tilt], [0.0])
    moved = project(map_7pbl, [rot], [tilt], [psi_rel], origin, apix)
    g = PolarGrid(40, 19, 90)
    ref = g.angular_fft(g.to_polar(torch.as_tensor(flat)))
    turned = g.to_image(g.angular_ifft(ref * g.rotation_phases(torch.tensor([-psi_rel]))))
    back = g.to_polar(torch.as_tensor(moved)) * g.shift_phases(torch.as_tensor(-origin / apix, dtype=torch.float32))
    undone = g.to_image(back)
    right = _cc(undone.numpy()[0], turned.numpy()[0])
    wrong = g.to_image(g.angular_ifft(ref * g.rotation_phases(torch.tensor([psi_rel]))))  # the other sense
    assert right > 0.98
    assert _cc(undone.numpy()[0], wrong.numpy()[0]) < right - 0.1


def test_expectation_recovers_a_known_pose(map_7pbl):
    """A noise-free particle made at (psi, origin) is aligned back to psi and origin by the E-step."""
    from cryomap.core.projector import project

    apix, psi_rel = 4.0, -72.0
    origin = np.array([[2.0 * apix, 1.0 * apix]])
    refs = project(map_7pbl, [0.0, 50.0], [0.0, 90.0], [0.0, 0.0])
    particle = project(map_7pbl, [50.0], [90.0], [psi_rel], origin, apix)
    al = Aligner(40, apix, r_max=19, n_psi=60, offset_px=3.0, mask_radius_px=18)
    batch = al.prepare(np.arange(1), particle)
    r = al.references(torch.as_tensor(refs))
    e = al.expectation(batch, r, torch.ones(al.grid.n_rho) * 1e3, torch.zeros(2))
    _, k, j, t, _ = e.map_pose()
    assert int(k) == 1
    assert abs(((-al.psi_deg[int(j)]) - psi_rel + 180) % 360 - 180) <= 3.0  # one 6° step
    assert np.allclose(-al.shifts[int(t)].numpy() * apix, origin[0], atol=1e-6)


def test_translation_grid_is_a_disc_with_zero_first():
    t = translation_grid(2.0)
    assert t.shape == (13, 2) and torch.all(t[0] == 0)
    assert float((t**2).sum(-1).max()) <= 4.0


def test_classify_reaches_purity_and_class_averages_match_views(views_snr1):
    s = views_snr1
    p = Classify2DParams(n_classes=6, iterations=4, offset_range_px=2.0, full_iterations=2)
    res = classify(s.source, p)
    assert purity(res.classes, s.view) >= 0.9
    cc = class_correlations(res.averages, res.classes, s.view, s.clean, max_shift_px=2.0)
    assert np.nanmin(cc) >= 0.8
    assert res.counts.sum() == len(s.source)
    assert res.averages.shape == (6, 32, 32) and res.half_averages.shape == (2, 6, 32, 32)
    assert np.all(np.abs(res.psi_deg) <= 180) and np.all(np.abs(res.origins_A) <= 2.0 * 6.0 * 1.5 + 1e-6)


def test_ceiling_is_near_perfect_at_snr_1(views_snr1):
    s = views_snr1
    lab = ceiling_assignments(s.source, s.clean, Classify2DParams(n_classes=6, offset_range_px=2.0))
    assert purity(lab, s.view) >= 0.97


def test_aligned_correlation_undoes_rotation_and_shift(views_snr1):
    img = views_snr1.clean[0]
    turned = np.rot90(img, 1)  # a 90° turn is exact on the grid
    shifted = np.roll(turned, (1, -2), axis=(0, 1))
    assert aligned_correlation(shifted, img) > 0.97
    assert _cc(shifted, img) < 0.8


def test_frc_crossing_and_ranking():
    frc = np.array([1.0, 0.9, 0.5, 0.1, 0.0])  # crosses 0.143 between rings 2 and 3
    frac = (0.5 - 0.143) / (0.5 - 0.1)
    assert crossing_resolution(frc, 8, 2.0) == pytest.approx(16.0 / (2 + frac), rel=1e-6)
    assert crossing_resolution(np.ones(5), 8, 2.0) == pytest.approx(4.0)  # never falls: Nyquist
    order = rank_order(np.array([12.0, 8.0, np.nan, 8.0, 20.0]), np.array([30, 10, 50, 40, 0]))
    assert order.tolist() == [3, 1, 0, 2, 4]  # finest first, ties by size, NaN after, empty last


def test_bad_input_is_one_line_and_writes_nothing(tmp_path, views_snr1):
    from cryomap.cli import main

    s = views_snr1
    few = s.source.subset(range(4))
    with pytest.raises(BadInputError, match="6 classes but holds only 4 particles"):
        classify(few, Classify2DParams(n_classes=6))
    with pytest.raises(BadInputError, match="mask does not fit"):
        classify(s.source, Classify2DParams(n_classes=2, mask_diameter_A=400.0))
    no_ctf = ParticleSource.from_arrays(s.source.images(np.arange(10)), 6.0)
    with pytest.raises(BadInputError, match="needs each particle's CTF"):
        classify(no_ctf, Classify2DParams(n_classes=2, ctf="wiener"))
    # through the command: exit 2, one line, no output folder
    from cryomap.particles.writer import write_particles

    write_particles(s.source.subset(range(4)), tmp_path / "p", progress=False)
    out = tmp_path / "out"
    assert main(["classify2d", str(tmp_path / "p" / "particles.star"), "--classes", "6", "-o", str(out)]) == 2
    assert not out.exists() and not any(q.name.startswith(".out") for q in tmp_path.iterdir())


def test_aligner_coarse_to_fine_matches_full_search(views_snr1):
    """The two-stage translation search finds the same best poses as the exhaustive one on clean data."""
    s = views_snr1
    p = Classify2DParams(n_classes=6, offset_range_px=4.0)
    al = _make_aligner(s.source, p, 0.9 * 32 * 6.0)
    assert al.coarse is not None
    imgs = s.source.images(np.arange(12))
    batch = al.prepare(np.arange(12), imgs, s.source.ctf(np.arange(12)))
    r = al.references(torch.as_tensor(s.clean))
    sigma2 = torch.ones(al.grid.n_rho) * float(batch.power.mean() / al.grid.n_theta)
    fine = al.expectation(batch, r, sigma2, torch.zeros(6)).map_pose()
    al.coarse = None
    full = al.expectation(batch, r, sigma2, torch.zeros(6)).map_pose()
    assert (fine[1] == full[1]).float().mean() >= 0.9  # classes
    assert (fine[3] == full[3]).float().mean() >= 0.75  # translations
    assert math.isfinite(float(fine[4].sum()))
