"""Condition tensors in every mode: shapes, content, randomness, resizing."""

from __future__ import annotations

import numpy as np
import pytest

from cryomap.datasets.conditions import build_condition, pack_latents, standardize_latents
from cryomap.core.fourier import resize_images
from cryomap.core.images import standardize_images
from cryomap.datasets.images import prepare_images

D = 16


def particle_images(n: int = 30, size: int = 24, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, size, size)).astype(np.float32) * rng.uniform(0.5, 3, size=(n, 1, 1)).astype(np.float32)


def which_images(cond: np.ndarray, prepared: np.ndarray) -> np.ndarray:
    """Index of the prepared image each depth slice equals (asserting there is one)."""
    flat = prepared.reshape(len(prepared), -1)
    out = []
    for s in cond[0]:
        err = np.abs(flat - s.reshape(1, -1)).max(axis=1)
        assert err.min() < 1e-4, "slice is not one of the images"
        out.append(int(err.argmin()))
    return np.array(out)


def test_resize_is_fourier_band_limited_and_standardised():
    y, x = np.mgrid[0:48, 0:48]
    img = (np.cos(2 * np.pi * 3 * x / 48) + 0.5 * np.sin(2 * np.pi * 2 * y / 48)).astype(np.float32)
    small = resize_images(img[None], 16)[0]
    ys, xs = np.mgrid[0:16, 0:16]
    expected = np.cos(2 * np.pi * 3 * xs / 16) + 0.5 * np.sin(2 * np.pi * 2 * ys / 16)
    np.testing.assert_allclose(small, expected, atol=1e-4)  # same function sampled on the coarser grid
    st = standardize_images(np.stack([img, 3 * img + 7]))
    np.testing.assert_allclose(st[0], st[1], atol=1e-5)
    np.testing.assert_allclose(st.mean(axis=(1, 2)), 0, atol=1e-5)
    np.testing.assert_allclose(st.std(axis=(1, 2)), 1, atol=1e-4)
    assert np.all(standardize_images(np.ones((1, 4, 4))) == 0)


def test_stack_draws_from_pool_without_replacement_and_is_seeded():
    imgs = particle_images(40)
    prepared = prepare_images(imgs, D)
    pool = np.arange(5, 40)
    cond = build_condition(imgs, "stack", D, np.random.default_rng(1), pool=pool)
    assert cond.shape == (1, D, D, D) and cond.dtype == np.float32
    idx = which_images(cond, prepared)
    assert set(idx) <= set(pool) and len(set(idx)) == D  # N = D distinct particles
    np.testing.assert_allclose(cond[0].mean(axis=(1, 2)), 0, atol=1e-5)
    again = build_condition(imgs, "stack", D, np.random.default_rng(1), pool=pool)
    np.testing.assert_array_equal(cond, again)
    other = build_condition(imgs, "stack", D, np.random.default_rng(2), pool=pool)
    assert not np.array_equal(which_images(other, prepared), idx)


def test_stack_fewer_images_tile_and_small_pool_repeats():
    imgs = particle_images(40)
    prepared = prepare_images(imgs, D)
    cond = build_condition(imgs, "stack", D, np.random.default_rng(0), n_images=5)
    idx = which_images(cond, prepared)
    assert len(set(idx)) == 5
    np.testing.assert_array_equal(idx, np.resize(idx[:5], D))  # slice k holds image k mod 5
    small = build_condition(imgs, "stack", D, np.random.default_rng(0), pool=np.array([3, 7, 9]))
    assert set(which_images(small, prepared)) <= {3, 7, 9}
    with pytest.raises(ValueError):
        build_condition(imgs, "stack", D, np.random.default_rng(0), n_images=D + 1)


def test_class_modes():
    classes = particle_images(25, seed=5)
    top = prepare_images(classes[:20], D)
    ordered = build_condition(None, "classes-ordered", D, None, class_averages=classes)
    np.testing.assert_array_equal(which_images(ordered, top), np.arange(D) % 20)
    k4 = build_condition(None, "classes-ordered", D, None, class_averages=classes, n_images=4)
    np.testing.assert_array_equal(which_images(k4, top), np.arange(D) % 4)
    shuffled = build_condition(None, "classes-shuffled", D, np.random.default_rng(3), class_averages=classes, n_images=4)
    order = which_images(shuffled, top)
    assert np.bincount(order, minlength=4).tolist() == [4, 4, 4, 4]  # each of the top 4, D/4 times
    assert not np.array_equal(order, np.arange(D) % 4)
    again = build_condition(None, "classes-shuffled", D, np.random.default_rng(3), class_averages=classes, n_images=4)
    np.testing.assert_array_equal(shuffled, again)
    repeated = build_condition(None, "class-repeated", D, np.random.default_rng(0), class_averages=classes)
    assert repeated.shape == (1, D, D, D)
    for k in range(1, D):
        np.testing.assert_array_equal(repeated[0, k], repeated[0, 0])  # identical depth slices
    np.testing.assert_allclose(repeated[0, 0], top[0], atol=1e-6)  # the best-ranked class


def test_latents_pack_tile_and_zero():
    L = 8
    rng = np.random.default_rng(0)
    lat = rng.normal(size=(100, L)).astype(np.float32) * 5 + 2
    cond = build_condition(None, "latents", D, np.random.default_rng(1), latents=lat)
    assert cond.shape == (1, D, D, D)
    need = D**3 // L  # 512 particles; only 100 here → tiled
    rows = cond.reshape(-1, L)
    assert len(rows) == need
    z = standardize_latents(lat)
    first = rows[:100]
    matches = [np.flatnonzero(np.abs(z - r).max(axis=1) < 1e-5) for r in first]
    assert all(len(m) == 1 for m in matches) and len({int(m[0]) for m in matches}) == 100  # a permutation
    np.testing.assert_array_equal(rows[100:200], rows[:100])  # tiling repeats the same order
    zero = build_condition(None, "latents", D, np.random.default_rng(1), latents=lat, latent_fill="zero")
    zr = zero.reshape(-1, L)
    np.testing.assert_array_equal(zr[:100], rows[:100])
    assert np.all(zr[100:] == 0)
    # enough particles: exactly D^3 / L of them, distinct; the pool restricts the rows used
    many = rng.normal(size=(2000, L)).astype(np.float32)
    pool = np.arange(1000, 2000)
    packed = build_condition(None, "latents", D, np.random.default_rng(2), latents=many, pool=pool).reshape(-1, L)
    zpool = standardize_latents(many[pool])
    hit = [np.flatnonzero(np.abs(zpool - r).max(axis=1) < 1e-5) for r in packed[:50]]
    assert all(len(h) == 1 for h in hit)
    assert pack_latents(np.arange(24, dtype=np.float32).reshape(3, 8), 2).shape == (2, 2, 2)


def test_unknown_mode_and_missing_inputs():
    with pytest.raises(ValueError, match="unknown condition mode"):
        build_condition(particle_images(3), "volume", D, np.random.default_rng(0))
    with pytest.raises(ValueError, match="class averages"):
        build_condition(None, "class-repeated", D, None)
    with pytest.raises(ValueError, match="latents"):
        build_condition(None, "latents", D, None)


@pytest.mark.parametrize(("n", "size"), [(64, 32), (65, 32), (64, 33), (33, 65), (48, 16)])
def test_resize_keeps_relion_centre_for_odd_and_even_sizes(n, size):
    """Pixel n//2 → size//2: an off-centre Gaussian resized equals the same Gaussian on the new grid.

    (torch-fourier-rescale alone centres odd sizes on (n+1)//2 and misses here by 0.1–0.2.)
    """
    s = n / 8
    g = np.arange(n) - n // 2
    y, x = np.meshgrid(g, g, indexing="ij")
    img = np.exp(-((y - 3) ** 2 + (x + 2) ** 2) / (2 * s * s)).astype(np.float32)
    out = resize_images(img, size)[0]
    gs = (np.arange(size) - size // 2) * n / size  # output pixel positions in input pixels from the centre
    ys, xs = np.meshgrid(gs, gs, indexing="ij")
    np.testing.assert_allclose(out, np.exp(-((ys - 3) ** 2 + (xs + 2) ** 2) / (2 * s * s)), atol=5e-3)


def test_classes_shuffled_fresh_per_draw_and_latent_zero_fill_exact_count():
    classes = particle_images(6, seed=9)
    top = prepare_images(classes[:3], D)
    orders = {tuple(which_images(build_condition(None, "classes-shuffled", D, np.random.default_rng(s),
                                                 class_averages=classes, n_images=3), top)) for s in range(4)}
    assert len(orders) > 1  # a new order per draw (each epoch's key gives a new rng)
    for o in orders:
        assert sorted(np.bincount(o, minlength=3).tolist()) == [5, 5, 6]  # ⌊16/3⌋ or ⌈16/3⌉ each
    lat = np.random.default_rng(0).normal(size=(7, 8)).astype(np.float32)
    zero = build_condition(None, "latents", D, None, latents=lat, latent_fill="zero")[0].reshape(-1)
    np.testing.assert_array_equal(zero[: 7 * 8], standardize_latents(lat).reshape(-1))  # no rng: STAR order
    assert np.count_nonzero(zero[7 * 8 :]) == 0 and zero.size == D**3
