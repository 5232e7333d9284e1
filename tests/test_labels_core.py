"""Labels: Fourier resampling, centred boxing, cryo2struct normalisation, thresholding, CLI."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch_fourier_shell_correlation import fourier_shell_correlation

from cryomap.io.mrc import MrcData, read_map
from cryomap.labels import fit_box, make_label, normalize_map, resample_map, threshold_map
from cryomap.labels.box import MoleculeDoesNotFitError, required_box
from cryomap.labels.resample import padded_size, resample_with_origin


def blobs(n: int, centres_zyx, sigma: float = 2.0, apix: float = 1.0) -> np.ndarray:
    """Sum of Gaussian blobs at the given (z, y, x) positions in Å from voxel 0."""
    g = np.arange(n, dtype=np.float32) * apix
    z, y, x = np.meshgrid(g, g, g, indexing="ij")
    out = np.zeros((n, n, n), np.float32)
    for cz, cy, cx in centres_zyx:
        out += np.exp(-((z - cz) ** 2 + (y - cy) ** 2 + (x - cx) ** 2) / (2 * sigma**2))
    return out


def random_map(n: int, seed: int = 0, k: int = 40) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.uniform(n * 0.3, n * 0.7, size=(k, 3))
    return blobs(n, centres, sigma=1.5)


def fsc(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return fourier_shell_correlation(torch.from_numpy(a).double(), torch.from_numpy(b).double()).numpy()


@pytest.mark.parametrize("apix_mid", [1.5, 1.3, 0.7])
def test_resample_round_trip_keeps_fsc_to_coarser_nyquist(apix_mid):
    n = 64
    vol = random_map(n)
    mid = resample_map(vol, 1.0, apix_mid)
    assert n <= mid.shape[0] * apix_mid <= 1.25 * n  # physical extent kept (plus a little padding)
    back = resample_map(mid, apix_mid, 1.0)
    back = fit_box(back, n, check=False)
    curve = fsc(vol, back)
    coarse_nyquist_shell = n * 1.0 / (2 * max(apix_mid, 1.0))  # shell index of 1/(2·apix_coarse)
    shells = np.arange(len(curve))
    inside = (shells >= 1) & (shells < coarse_nyquist_shell)
    assert curve[inside].min() > 0.99, curve[inside]
    if apix_mid > 1.0:  # downsampling really removed detail beyond the coarse Nyquist (a cube in Fourier space)
        assert curve[shells > coarse_nyquist_shell + 1.5].max() < 0.95


def test_padded_size_gives_exact_voxel_size():
    for n, ratio in [(65, 1.3), (64, 1 / 1.5), (100, 2.0), (128, 1.06)]:
        n_pad, m = padded_size(n, ratio)
        assert n_pad >= n and n_pad % 2 == 0 and m % 2 == 0
        assert abs(n_pad * ratio - m) / 2 <= 0.05


@pytest.mark.parametrize("apix_in", [1.0, 1.37, 2.0])
def test_make_label_keeps_density_in_place_and_centred(apix_in):
    n = 48
    pos = np.array([30.0, 20.0, 26.0]) * apix_in  # (z, y, x) Å from voxel 0, off centre
    vol = blobs(n, [pos], sigma=2.5 * apix_in, apix=apix_in)
    origin = (10.0, -5.0, 3.0)  # x, y, z Å
    label = make_label(MrcData(vol, apix_in, origin), apix=1.0, box=64)
    assert label.data.shape == (64, 64, 64) and label.apix == 1.0
    w = label.data.astype(np.float64)
    idx = np.indices(w.shape).reshape(3, -1)
    com_zyx = (idx * w.reshape(-1)).sum(1) / w.sum()
    phys = np.array([label.origin[2], label.origin[1], label.origin[0]]) + com_zyx * 1.0
    expected = np.array([origin[2], origin[1], origin[0]]) + pos
    np.testing.assert_allclose(phys, expected, atol=0.15)
    # a blob at the exact map centre lands on voxel box//2
    centred = blobs(n, [[(n // 2) * apix_in] * 3], sigma=2.0 * apix_in, apix=apix_in)
    lab = make_label(MrcData(centred, apix_in), apix=1.0, box=64).data
    com = (np.indices(lab.shape).reshape(3, -1) * lab.reshape(-1)).sum(1) / lab.sum()
    np.testing.assert_allclose(com, [32, 32, 32], atol=0.1)


def test_normalize_matches_numpy_on_real_70s_map(shared_data):
    m = read_map(shared_data / "maps" / "70S_ribosome_65px.mrc", apix=1.0)
    padded = np.pad(m.data, 8)  # zero padding must not change p: it uses non-zero voxels only
    p = np.percentile(m.data[m.data != 0], 95)
    expected = np.clip(m.data / p, 0, 1)
    np.testing.assert_allclose(normalize_map(m.data), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(normalize_map(padded)[8:-8, 8:-8, 8:-8], expected, rtol=1e-5, atol=1e-6)
    out = normalize_map(m.data)
    assert out.min() == 0.0 and out.max() == 1.0
    assert abs((out[m.data != 0] >= 1.0).mean() - 0.05) < 0.002  # 5 % of the non-zero voxels saturate


def test_normalize_rules_and_threshold_exact():
    data = np.array([0.0, -3.0, 1.0, 2.0, 4.0, 10.0, 0.0, 0.0], np.float32)
    p = np.percentile([-3.0, 1.0, 2.0, 4.0, 10.0], 95)
    out = normalize_map(data)
    np.testing.assert_allclose(out, np.clip(data / p, 0, 1), rtol=1e-6)
    assert out[1] == 0.0
    binary = threshold_map(out, 0.2)
    assert set(np.unique(binary)) == {0.0, 1.0}
    np.testing.assert_array_equal(binary, (out >= 0.2).astype(np.float32))
    assert threshold_map(np.array([0.9], np.float32), 0.9)[0] == 1.0  # at t → 1
    with pytest.raises(ValueError):
        normalize_map(np.zeros((4, 4, 4)))


def test_too_large_molecule_is_refused_with_needed_box():
    vol = blobs(96, [[48, 48, 20], [48, 48, 76]], sigma=3.0)  # spans x 20..76 around centre 48
    need = required_box(vol)
    assert 60 < need < 80
    with pytest.raises(MoleculeDoesNotFitError) as err:
        make_label(MrcData(vol, 1.0), apix=1.0, box=48)
    assert f"--box {need}" in str(err.value) and err.value.needed_box == need
    assert make_label(MrcData(vol, 1.0), apix=1.0, box=need).data.shape == (need,) * 3
    fitted = fit_box(vol, need)
    faces = [fitted[0], fitted[-1], fitted[:, 0], fitted[:, -1], fitted[:, :, 0], fitted[:, :, -1]]
    assert max(float(f.max()) for f in faces) < 0.1 * vol.max()  # the box that "fits" keeps the molecule whole
    # the same molecule at 2 Å/voxel fits in half the box
    assert make_label(MrcData(vol, 1.0), apix=2.0, box=need // 2 + 2).data.shape[0] == need // 2 + 2


def test_resample_origin_identity_and_odd_sizes():
    vol = random_map(33, k=10)
    same, origin = resample_with_origin(vol, 1.2, 1.2, (1.0, 2.0, 3.0))
    np.testing.assert_array_equal(same, vol)
    assert origin == (1.0, 2.0, 3.0)
    up = resample_map(vol, 2.0, 1.0)
    assert up.shape[0] % 2 == 0 and abs(up.shape[0] - 66) <= 2


def test_labels_cli(tmp_path, shared_data):
    from cryomap.cli import main
    from cryomap.io.mrc import read_mrc

    src = shared_data / "maps" / "70S_ribosome_65px.mrc"
    out = tmp_path / "label.mrc"
    assert main(["labels", str(src), "-o", str(out), "--box", "64"]) == 2  # no voxel size in header
    assert not out.exists()
    assert main(["labels", str(src), "-o", str(out), "--box", "96", "--in-apix", "1.2", "--threshold", "0.9"]) == 0
    lab = read_mrc(out)
    assert lab.data.shape == (96, 96, 96) and lab.apix == pytest.approx(1.0)
    assert set(np.unique(lab.data)) == {0.0, 1.0}
    assert main(["labels", str(src), "-o", str(out), "--box", "96", "--in-apix", "1.2"]) == 2  # exists
    assert main(["labels", str(src), "-o", str(out), "--box", "40", "--in-apix", "1.2", "--force"]) == 2
    assert read_mrc(out).data.shape == (96, 96, 96)  # refused run left the old file alone


def test_small_molecule_in_a_big_box_keeps_its_solvent_zero():
    """Fourier resampling rings into exact-zero solvent; the label must not count that ringing.

    A 20 Å ball in a 205 Å box holds ~0.5 % of the voxels, so if ringing (~1e-4 of the peak)
    counted as non-zero, the 95th percentile would land in it and half the box would saturate.
    With the solvent kept at 0 the percentile is taken over the molecule: about 5 % of its
    voxels reach 1 (a little more of the positive ones, as ringing inside it clips to 0), and
    nothing away from it is non-zero.
    """
    n, apix_in = 64, 3.2
    z, y, x = np.mgrid[:n, :n, :n] - n // 2
    r = np.sqrt(x**2 + y**2 + z**2) * apix_in
    density = np.where(r < 20.0, np.exp(-(r**2) / (2 * 8.0**2)), 0.0).astype(np.float32)
    label = make_label(MrcData(density, apix_in, (0.0, 0.0, 0.0)), apix=4.0, box=48).data
    nonzero = label > 0
    assert (label > 0).mean() < 0.01
    assert 0.03 <= (label[nonzero] >= 1.0).mean() <= 0.1
    zz, yy, xx = np.mgrid[:48, :48, :48] - 24
    far = np.sqrt(xx**2 + yy**2 + zz**2) * 4.0 > 20.0 + 2 * 4.0
    assert not label[far].any()
