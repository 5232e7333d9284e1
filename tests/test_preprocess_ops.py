"""Each preprocessing operation does what it says, and a wrong or idle implementation fails here."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cryomap.core.ctf import CtfParams, apply_ctf, ctf_images
from cryomap.preprocess.blend import blend
from cryomap.preprocess.clahe import clahe
from cryomap.preprocess.ctf_correct import phase_flip, wiener
from cryomap.preprocess.denoise import denoise_topaz, lowpass
from cryomap.preprocess.guided import guided_filter
from cryomap.preprocess.standardize import standardize

APIX = 2.0


def _blobs(n: int, box: int = 64, seed: int = 0) -> np.ndarray:
    """Smooth positive 'particles': a few Gaussian blobs each, centred in the box."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:box, :box].astype(np.float32)
    out = np.zeros((n, box, box), np.float32)
    for k in range(n):
        for _ in range(4):
            cy, cx = rng.uniform(0.3, 0.7, 2) * box
            s = rng.uniform(2.0, 6.0)
            out[k] += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s))
    return out


def _ctf(n: int, seed: int = 1) -> CtfParams:
    rng = np.random.default_rng(seed)
    u = rng.uniform(12000, 22000, n)
    return CtfParams(u, u - rng.uniform(0, 500, n), rng.uniform(-90, 90, n), 300.0, 2.7, 0.1)


def _cc(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.reshape(len(a), -1) - a.reshape(len(a), -1).mean(1, keepdims=True)
    b = b.reshape(len(b), -1) - b.reshape(len(b), -1).mean(1, keepdims=True)
    return (a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1))


def test_blend_is_exactly_the_weighted_average():
    rng = np.random.default_rng(0)
    o, d = rng.normal(size=(2, 3, 8, 8)).astype(np.float32)
    for w in (0.0, 0.5, 2 / 3, 1.0):
        np.testing.assert_array_equal(blend(o, d, w), np.float32(w) * d + (np.float32(1) - np.float32(w)) * o)
    np.testing.assert_allclose(blend(o, d, 0.5), (d + o) / 2, atol=1e-6)
    np.testing.assert_allclose(blend(o, d, 2 / 3), (2 * d + o) / 3, atol=1e-6)
    with pytest.raises(ValueError):
        blend(o, d, 1.5)


def test_phase_flip_makes_the_spectrum_agree_in_sign_with_the_projection():
    """After flipping, Re(F_flipped · conj(F_clean)) = |CTF|·|F|² ≥ 0 wherever the CTF is non-zero."""
    clean = _blobs(4)
    params = _ctf(4)
    modulated = apply_ctf(clean, params, APIX)
    c = ctf_images(params, APIX, clean.shape[-2:]).numpy()
    fc = np.fft.rfft2(clean)
    cross_raw = (np.fft.rfft2(modulated) * np.conj(fc)).real
    cross = (np.fft.rfft2(phase_flip(modulated, params, APIX)) * np.conj(fc)).real
    where = (np.abs(c) > 0.05) & (np.abs(fc) > 1e-3 * np.abs(fc).max())
    assert (cross_raw[where] < 0).mean() > 0.2  # the CTF really flips many coefficients
    assert (cross[where] > 0).all()
    # flipping twice is the identity
    np.testing.assert_allclose(phase_flip(phase_flip(modulated, params, APIX), params, APIX), modulated, atol=1e-4)


def test_wiener_recovers_the_projection_better_than_flipping():
    clean = _blobs(4)
    params = _ctf(4)
    modulated = apply_ctf(clean, params, APIX)
    raw, flipped, wien = _cc(modulated, clean), _cc(phase_flip(modulated, params, APIX), clean), _cc(
        wiener(modulated, params, APIX, 0.01), clean)
    assert (flipped > raw).all() and (wien > flipped).all() and (wien > 0.9).all()


def test_standardize_box_and_ring():
    rng = np.random.default_rng(3)
    imgs = (rng.normal(size=(3, 32, 32)) * 4 + 7).astype(np.float32)
    box = standardize(imgs)
    np.testing.assert_allclose(box.mean(axis=(1, 2)), 0, atol=1e-5)
    np.testing.assert_allclose(box.std(axis=(1, 2)), 1, atol=1e-4)
    imgs[:, 12:20, 12:20] += 50  # a bright centre the ring statistics must ignore
    ring = standardize(imgs, "ring", bg_radius=10)
    yy, xx = np.mgrid[:32, :32]
    bg = (xx - 16) ** 2 + (yy - 16) ** 2 > 100
    np.testing.assert_allclose(ring[:, bg].mean(axis=1), 0, atol=1e-5)
    np.testing.assert_allclose(ring[:, bg].std(axis=1), 1, atol=1e-4)
    assert np.all(standardize(np.full((1, 8, 8), 3.0)) == 0)  # constant: zeros, no NaN


def test_standardizing_windows_of_a_micrograph_is_standardizing_their_copies():
    """Windows read where they lie (strided views, as extraction passes them) give the bytes of contiguous
    copies, in place or not; the ring of each result has mean 0 and std 1; the statistics returned are the
    result's min, max, sum and sum of squares."""
    from cryomap.core.images import background_mask, standardize_images

    rng = np.random.default_rng(5)
    mic = (rng.normal(size=(120, 150)) * 3 + 40).astype(np.float32)
    mic[50:70, 60:80] += 25  # a particle-like bright patch inside some boxes
    before = mic.copy()
    corners = [(0, 0), (10, 37), (55, 61), (88, 118), (40, 70)]
    windows = [mic[y:y + 32, x:x + 32] for y, x in corners]
    copies = np.stack(windows)
    stats = np.empty((len(windows), 4))
    out = standardize_images(windows, 12.0, invert=True, stats=stats)
    np.testing.assert_array_equal(out, standardize_images(copies, 12.0, invert=True))
    in_place = copies.copy()
    assert standardize_images(in_place, 12.0, invert=True, inplace=True) is in_place
    np.testing.assert_array_equal(in_place, out)
    ring = background_mask(32, 12.0)
    np.testing.assert_allclose(out[:, ring].mean(axis=1), 0, atol=1e-5)
    np.testing.assert_allclose(out[:, ring].std(axis=1), 1, atol=1e-5)
    flat = out.reshape(len(out), -1).astype(np.float64)
    np.testing.assert_array_equal(stats[:, 0], flat.min(axis=1))
    np.testing.assert_array_equal(stats[:, 1], flat.max(axis=1))
    np.testing.assert_allclose(stats[:, 2], flat.sum(axis=1), atol=1e-9)
    np.testing.assert_allclose(stats[:, 3], (flat**2).sum(axis=1), rtol=1e-12)
    np.testing.assert_array_equal(mic, before)  # the windows were read, not written


def test_topaz_denoises_and_normalises_each_image_on_its_own():
    from cryomap.preprocess.denoise import load_topaz

    rng = np.random.default_rng(4)
    clean = _blobs(3)
    noisy = (clean + rng.normal(scale=1.0, size=clean.shape)).astype(np.float32)
    out = denoise_topaz(noisy, "unet-small")
    assert (_cc(out, clean) > _cc(noisy, clean) + 0.2).all()
    # image 0's result does not depend on what else is in its batch
    batch = np.stack([noisy[0], noisy[1] * 1000 + 500])
    np.testing.assert_allclose(denoise_topaz(batch, "unet-small")[0], out[0], rtol=1e-4, atol=1e-4)
    # ... whereas Topaz's own batch API (topaz.denoise.Denoise._denoise: one mean and std for the
    # whole batch; importing it needs h5py, so its three lines are repeated here) changes it
    x = torch.from_numpy(batch)
    mu, sd = x.mean(), x.std()
    with torch.no_grad():
        theirs = (load_topaz("unet-small")(((x - mu) / sd)[:, None])[:, 0] * sd + mu).numpy()
    assert np.abs(theirs[0] - out[0]).max() > 10 * np.abs(out[0]).std()


def test_lowpass_halves_the_amplitude_at_its_resolution():
    box, res = 64, 16.0
    x = np.arange(box)
    f = 1.0 / res  # cycles per Å
    k = f * APIX * box  # cycles per box: 8
    wave = np.cos(2 * np.pi * k * x / box)[None, None, :].repeat(box, axis=1).astype(np.float32)
    out = lowpass(wave, APIX, res)
    assert abs(out[0, 0].std() / wave[0, 0].std() - 0.5) < 0.01
    low = np.cos(2 * np.pi * 1 * x / box)[None, None, :].repeat(box, axis=1).astype(np.float32)
    assert lowpass(low, APIX, res)[0, 0].std() / low[0, 0].std() > 0.98


def test_clahe_raises_local_contrast_in_a_dim_region():
    rng = np.random.default_rng(5)
    img = np.empty((1, 64, 64), np.float32)
    img[0, :, :32] = 0.0 + 0.05 * rng.normal(size=(64, 32))  # dim, low contrast
    img[0, :, 32:] = 5.0 + 1.0 * rng.normal(size=(64, 32))  # bright, high contrast
    for bits in (8, 16):
        out = clahe(img, clip_limit=2.0, tile_grid=2, bits=bits)
        before = img[0, :, :32].std() / img[0, :, 32:].std()
        after = out[0, :, :32].std() / out[0, :, 32:].std()
        assert after > 3 * before
        assert np.isfinite(out).all()
    # the output stays on the input's scale (the quantisation is mapped back)
    assert abs(float(clahe(img)[0, :, 32:].mean()) - 5.0) < 1.0
    np.testing.assert_array_equal(clahe(np.full((1, 16, 16), 2.5, np.float32)), 2.5)  # constant: unchanged
    with pytest.raises(ValueError):
        clahe(img, bits=12)


def test_guided_filter_smooths_flat_regions_and_keeps_an_edge():
    rng = np.random.default_rng(6)
    step = np.zeros((1, 64, 64), np.float32)
    step[0, :, 32:] = 4.0
    img = (step + 0.3 * rng.normal(size=step.shape)).astype(np.float32)
    out = guided_filter(img)  # defaults: radius 2, eps 0.2 × var
    flat = (slice(None), slice(8, 56), slice(4, 26))
    assert out[flat].var() < 0.5 * img[flat].var()
    edge_jump = out[0, :, 33].mean() - out[0, :, 30].mean()  # a pixel either side of the edge
    assert edge_jump > 0.8 * 4.0
    # the CryoSegNet setting (guide = image / 255, eps 0.1 absolute) is a box blur: the edge smears
    blurred = guided_filter(img, radius=2, eps=0.1, guide=img / 255.0, eps_relative=False)
    assert blurred[0, :, 33].mean() - blurred[0, :, 30].mean() < 0.7 * 4.0


def test_self_guided_filter_is_opencvs_guided_filter():
    """The guide-is-the-image fast path (four box filters) is ximgproc's guided filter, borders included."""
    import cv2

    rng = np.random.default_rng(7)
    imgs = (_blobs(3, 48) * 3 + rng.normal(size=(3, 48, 48))).astype(np.float32)
    for radius, eps in ((1, 0.05), (2, 0.2), (5, 1.0)):
        ours = guided_filter(imgs, radius, eps)
        for k in range(len(imgs)):
            theirs = cv2.ximgproc.guidedFilter(imgs[k], imgs[k], radius, eps * float(imgs[k].astype(np.float64).var()))
            np.testing.assert_allclose(ours[k], theirs, atol=2e-3 * float(np.abs(theirs).max()))
        assert np.abs(ours - imgs).mean() > 0.05  # it filtered something
    # an explicit guide equal to the image takes ximgproc's general path: the same answer
    np.testing.assert_allclose(guided_filter(imgs, guide=imgs.copy()), guided_filter(imgs), atol=2e-3 * float(np.abs(imgs).max()))


@pytest.mark.parametrize("op", ["standardize", "clahe", "guided"])
def test_per_image_kernels_give_the_same_bytes_in_any_number_of_threads(op):
    from cryomap.core.images import standardize_images

    imgs = (_blobs(12, 40) + np.random.default_rng(8).normal(size=(12, 40, 40))).astype(np.float32)
    fn = {"standardize": lambda x, t: standardize_images(x, 12.0, threads=t),
          "clahe": lambda x, t: clahe(x, threads=t), "guided": lambda x, t: guided_filter(x, threads=t)}[op]
    one = fn(imgs, 1)
    assert not np.array_equal(one, imgs)
    np.testing.assert_array_equal(one, fn(imgs, 2))
    np.testing.assert_array_equal(one, fn(imgs, 3))


def test_ctf_filtering_in_chunks_is_the_whole_batch_at_once(monkeypatch):
    """filter_by_ctf transforms a few images at a time (bounded memory): the answer does not depend on it."""
    import cryomap.core.ctf as ctf_module

    imgs = _blobs(7, 48) + np.random.default_rng(9).normal(size=(7, 48, 48)).astype(np.float32)
    params = _ctf(7)
    whole = ctf_module.wiener_images(imgs, params, APIX, 0.1)
    monkeypatch.setattr(ctf_module, "FILTER_CHUNK_BYTES", 2 * 4 * 48 * 48)  # two images per chunk
    chunked = ctf_module.wiener_images(imgs, params, APIX, 0.1)
    np.testing.assert_allclose(chunked, whole, atol=1e-5)
    assert np.abs(whole - imgs).mean() > 0.01  # the filter changed the images


def _without_nyquist(images: np.ndarray) -> np.ndarray:
    """Images with their Nyquist row and column zeroed: there an astigmatic CTF's sign at (ky, kx) and at its
    Hermitian mate can differ, and an rfft-grid filter is then ambiguous (each DFT library resolves it its own way)."""
    h, w = images.shape[-2:]
    f = np.fft.rfft2(images)
    if h % 2 == 0:
        f[..., h // 2, :] = 0
    if w % 2 == 0:
        f[..., w // 2] = 0
    return np.fft.irfft2(f, s=(h, w)).astype(np.float32)


@pytest.mark.parametrize("shape", [(48, 48), (33, 33), (40, 64), (45, 32)])
def test_phase_flip_is_the_fft_times_the_sign_of_each_ctf(shape, monkeypatch):
    """The OpenCV phase flip (packed spectrum for even sizes, complex for odd) equals numpy's rfft2 × sign(CTF)
    per particle, whether the sign patterns are rendered ahead or per image, in any number of threads; and
    it is the torch-ctf filter it replaced, on band-limited images."""
    import cryomap.core.phase_flip as pf
    from cryomap.core.ctf import filter_by_ctf
    from cryomap.core.ctf_params import ctf_grid, ctf_phase_coefficients

    rng = np.random.default_rng(4)
    n = 6
    imgs = _without_nyquist(rng.normal(size=(n, *shape)))
    params = _ctf(n, seed=5)
    params.defocus_u[3] = params.defocus_u[2]  # two particles share a CTF (rendered once)
    params.defocus_v[3], params.angle[3] = params.defocus_v[2], params.angle[2]
    coef, quartic = ctf_phase_coefficients(params)
    sign = np.stack([np.where(ctf_grid(c, quartic, APIX, shape) < 0, -1.0, 1.0) for c in coef])
    oracle = np.fft.irfft2(np.fft.rfft2(imgs) * sign, s=shape)
    out = pf.phase_flip_images(imgs, params, APIX, threads=1)
    np.testing.assert_allclose(out, oracle, atol=1e-5)
    np.testing.assert_array_equal(out, pf.phase_flip_images(imgs, params, APIX, threads=3))
    monkeypatch.setattr(pf, "PRERENDER_BYTES", 0)  # every image renders its own sign pattern
    np.testing.assert_array_equal(out, pf.phase_flip_images(imgs, params, APIX, threads=2))
    import torch

    replaced = filter_by_ctf(imgs, params, APIX, lambda c: torch.where(c < 0, -1.0, 1.0).to(c.dtype))
    assert np.abs(out - replaced).mean() < 1e-4
    assert np.abs(out - imgs).mean() > 0.1  # the flip changed the images
