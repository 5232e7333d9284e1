"""Particle extraction: box convention, edge policy, normalisation, binning, metadata carry-over,
bad input. Synthetic micrographs hold Gaussian blobs at known positions."""

from __future__ import annotations

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile

from cryomap.errors import BadInputError
from cryomap.io.coords import write_cryoppp_csv
from cryomap.io.mrc import read_stack, write_mrc
from cryomap.io.star import read_star, write_star
from cryomap.core.images import background_mask
from cryomap.core.images import standardize_images as normalize_background
from cryomap.particles.boxes import cut_boxes
from cryomap.particles.extract import default_box, extract_particles
from cryomap.particles.plan import nearest_within

APIX = 2.0


def cli_main(argv):
    """The real ``cryomap`` entry point (imported late: it discovers every sub-command)."""
    from cryomap.cli import main

    return main(argv)


def blob_micrograph(shape, centres, sigma=3.0, amp=10.0, seed=0) -> np.ndarray:
    """Noise plus Gaussian blobs centred at (x, y) px (x = column)."""
    rng = np.random.default_rng(seed)
    img = rng.normal(10.0, 1.0, size=shape).astype(np.float32)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    for x, y in centres:
        img += amp * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2)).astype(np.float32)
    return img


def peak_position(avg: np.ndarray) -> tuple[float, float]:
    """Intensity-weighted centroid (row, col) of the positive part of the central 9x9 region."""
    c = avg.shape[0] // 2
    win = avg[c - 4 : c + 5, c - 4 : c + 5]
    w = np.clip(win - np.median(avg), 0, None)
    yy, xx = np.mgrid[-4:5, -4:5]
    return c + float((w * yy).sum() / w.sum()), c + float((w * xx).sum() / w.sum())


def make_dataset(root, n_mics=3, shape=(96, 128), with_star=False, fractional=False):
    """A CryoPPP-layout folder: micrographs/*.mrc, CSV coordinates, optional STAR with CTF and poses."""
    (root / "micrographs").mkdir(parents=True)
    (root / "ground_truth" / "particle_coordinates").mkdir(parents=True)
    star_rows = []
    for m in range(n_mics):
        centres = [(30, 30), (70, 40), (100, 60), (5, 48)]  # the last one's 32 px box leaves the image
        exact = [(x + (0.3 if fractional else 0.0), y - (0.4 if fractional else 0.0)) for x, y in centres]
        write_mrc(root / "micrographs" / f"mic_{m}.mrc", blob_micrograph(shape, exact, seed=m), APIX)
        write_cryoppp_csv(root / "ground_truth" / "particle_coordinates" / f"mic_{m}.csv",
                          pd.DataFrame({"x": [c[0] for c in centres], "y": [c[1] for c in centres], "diameter": 20}))
        for i, (x, y) in enumerate(exact):
            star_rows.append({"rlnMicrographName": f"J9/motioncorrected/012345678901234567890_mic_{m}.mrc",
                              "rlnCoordinateX": x, "rlnCoordinateY": y, "rlnDefocusU": 10000.0 + 100 * m + i,
                              "rlnDefocusV": 9000.0, "rlnDefocusAngle": 10.0, "rlnVoltage": 300.0,
                              "rlnSphericalAberration": 2.7, "rlnAmplitudeContrast": 0.1,
                              "rlnImagePixelSize": APIX, "rlnAngleRot": 10.0 * i, "rlnAngleTilt": 20.0 + m,
                              "rlnAnglePsi": 5.0 * i, "rlnOriginXAngst": 0.0, "rlnOriginYAngst": 0.0})
    if with_star:
        write_star(root / "ground_truth" / "10999_particles_selected.star", pd.DataFrame(star_rows))
    return root


def test_default_box_rule():
    assert default_box(108) == 162 and default_box(20) == 30 and default_box(21) == 32


def test_nearest_within_is_the_kd_tree_nearest_neighbour():
    """The STAR matching's nearest neighbour equals scipy's cKDTree (the oracle) on random clouds, including
    queries with no point within 2 px, empty inputs, and a column of points sharing one x (all candidates)."""
    from scipy.spatial import cKDTree

    rng = np.random.default_rng(1)
    seen = np.zeros(2, int)  # queries matched, not matched: both cases must have been exercised
    for _ in range(100):
        pts = rng.uniform(0, 100, (int(rng.integers(1, 300)), 2))
        near = pts[: len(pts) // 2] + rng.normal(0, 1.0, (len(pts) // 2, 2))
        queries = np.concatenate([near, rng.uniform(0, 100, (int(rng.integers(0, 100)), 2))])
        idx, matched = nearest_within(pts, queries, 2.0)
        if not len(queries):
            assert len(idx) == 0
            continue
        dist, ref = cKDTree(pts).query(queries, k=1)
        assert np.array_equal(matched, dist <= 2.0)
        assert np.array_equal(idx[matched], ref[matched])
        seen += [matched.sum(), (~matched).sum()]
    assert seen.min() > 1000
    column = np.column_stack([np.full(50, 7.0), np.arange(50.0) * 3])
    idx, matched = nearest_within(column, [[7.5, 31.2], [20.0, 0.0]], 2.0)
    assert idx[0] == 10 and list(matched) == [True, False]
    idx, matched = nearest_within(np.zeros((0, 2)), [[1.0, 1.0]], 2.0)
    assert not matched.any()


def test_cut_boxes_follows_relion_centre_and_edge_policies():
    mic = np.arange(20 * 30, dtype=np.float32).reshape(20, 30)
    imgs, kept, padded = cut_boxes(mic, np.array([10, 1]), np.array([8, 8]), 6, "skip")
    assert list(kept) == [True, False] and not padded.any()
    assert imgs.shape == (1, 6, 6) and imgs[0, 3, 3] == mic[8, 10]  # pixel (box//2, box//2) is the centre
    np.testing.assert_array_equal(imgs[0], mic[5:11, 7:13])
    imgs, kept, padded = cut_boxes(mic, np.array([10, 1]), np.array([8, 8]), 6, "pad", bg_radius=1.0)
    assert kept.all() and list(padded) == [False, True]
    inside = mic[5:11, 0:4]
    np.testing.assert_array_equal(imgs[1][:, 2:], inside)
    bg = background_mask(6, 1.0)[:, 2:]
    np.testing.assert_allclose(imgs[1][:, :2], inside[bg].mean())


def test_normalisation_statistics_and_invert():
    rng = np.random.default_rng(3)
    imgs = (rng.normal(5, 3, size=(4, 32, 32)) + np.linspace(0, 4, 4)[:, None, None]).astype(np.float32)
    out = normalize_background(imgs, bg_radius=12)
    bg = background_mask(32, 12)
    np.testing.assert_allclose(out[:, bg].mean(axis=1), 0, atol=1e-5)
    np.testing.assert_allclose(out[:, bg].std(axis=1), 1, atol=1e-4)
    np.testing.assert_allclose(normalize_background(imgs, 12, invert=True), -out, atol=1e-6)


def test_extract_folder_skip_policy_centring_and_star(tmp_path):
    root = make_dataset(tmp_path / "ds")
    res = extract_particles(root, tmp_path / "out", 32, progress=False)
    assert res.n_micrographs == 3 and res.n_particles == 9 and res.n_skipped_edge == 3
    stack = read_stack(res.stack_path)
    assert stack.data.shape == (9, 32, 32) and stack.apix == pytest.approx(APIX)
    avg = np.asarray(stack.data).mean(axis=0)
    assert np.allclose(peak_position(avg), (16, 16), atol=0.25)
    bg = background_mask(32, 12)
    np.testing.assert_allclose(np.asarray(stack.data)[:, bg].mean(axis=1), 0, atol=1e-4)
    np.testing.assert_allclose(np.asarray(stack.data)[:, bg].std(axis=1), 1, atol=1e-3)
    with mrcfile.open(res.stack_path) as mrc:  # opens with mrcfile, header is a stack
        assert mrc.is_image_stack()
    blocks = starfile.read(res.star_path, always_dict=True)  # opens with starfile, RELION 3.1 blocks
    assert set(blocks) == {"optics", "particles"}
    t = read_star(res.star_path).particles
    assert list(t["rlnImageName"].str.split("@").str[0].astype(int)) == list(range(1, 10))
    assert (t["rlnImageName"].str.endswith("@particles.mrcs")).all()
    assert t["rlnImagePixelSize"].iloc[0] == pytest.approx(APIX) and (t["rlnImageSize"] == 32).all()
    assert set(t["rlnMicrographName"]) == {f"micrographs/mic_{m}.mrc" for m in range(3)}
    assert list(t["rlnCoordinateX"][:3]) == [30, 70, 100]


def test_pad_policy_flags_and_inverts(tmp_path):
    root = make_dataset(tmp_path / "ds", n_mics=1)
    res = extract_particles(root, tmp_path / "out", 32, edge="pad", invert=True, progress=False)
    assert res.n_particles == 4 and res.n_padded == 1 and res.n_skipped_edge == 0
    t = read_star(res.star_path).particles
    assert list(t["rlnCryomapEdgePadded"]) == [0, 0, 0, 1]
    avg = np.asarray(read_stack(res.stack_path).data)[:3].mean(axis=0)
    assert np.allclose(peak_position(-avg), (16, 16), atol=0.25)  # inverted: the blob is dark
    assert avg[16, 16] < avg[0, 0]


def test_bin_by_fourier_crop_scales_pixel_size(tmp_path):
    root = make_dataset(tmp_path / "ds", n_mics=1)
    res = extract_particles(root, tmp_path / "out", 32, bin_factor=2, progress=False)
    stack = read_stack(res.stack_path)
    assert stack.data.shape == (3, 16, 16) and stack.apix == pytest.approx(2 * APIX)
    t = read_star(res.star_path).particles
    assert t["rlnImagePixelSize"].iloc[0] == pytest.approx(2 * APIX)
    assert t["rlnMicrographPixelSize"].iloc[0] == pytest.approx(APIX)
    avg = np.asarray(stack.data).mean(axis=0)
    assert np.allclose(peak_position(avg), (8, 8), atol=0.25)


def test_folder_with_star_carries_ctf_poses_and_subpixel_origin(tmp_path):
    root = make_dataset(tmp_path / "ds", n_mics=2, with_star=True, fractional=True)
    res = extract_particles(root, tmp_path / "out", 32, progress=False)
    t = read_star(res.star_path).particles
    assert len(t) == 6
    for col in ("rlnDefocusU", "rlnVoltage", "rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"):
        assert col in t, col
    # particle i of micrograph m carries that particle's defocus and angles
    np.testing.assert_allclose(t["rlnDefocusU"], [10000, 10001, 10002, 10100, 10101, 10102])
    np.testing.assert_allclose(t["rlnAngleRot"], [0, 10, 20, 0, 10, 20])
    np.testing.assert_allclose(t["rlnAngleTilt"], [20, 20, 20, 21, 21, 21])
    # the STAR had x+0.3, y-0.4: integer centres written, remainder in the origin (centre = coord - origin)
    centre_x = t["rlnCoordinateX"] - t["rlnOriginXAngst"] / APIX
    centre_y = t["rlnCoordinateY"] - t["rlnOriginYAngst"] / APIX
    np.testing.assert_allclose(centre_x, [30.3, 70.3, 100.3] * 2, atol=1e-5)
    np.testing.assert_allclose(centre_y, [29.6, 39.6, 59.6] * 2, atol=1e-5)


def test_star_source_and_missing_micrograph(tmp_path):
    root = make_dataset(tmp_path / "ds", n_mics=2, with_star=True)
    star = root / "ground_truth" / "10999_particles_selected.star"
    res = extract_particles(star, tmp_path / "out", 32, progress=False)
    assert res.n_particles == 6 and res.apix == pytest.approx(APIX)
    (root / "micrographs" / "mic_1.mrc").unlink()
    with pytest.raises(BadInputError, match="mic_1.mrc named in the STAR file is not on disk"):
        extract_particles(star, tmp_path / "out2", 32, progress=False)
    assert not (tmp_path / "out2").exists()
    res = extract_particles(star, tmp_path / "out2", 32, skip_bad=True, progress=False)
    assert res.n_particles == 3 and len(res.skipped_micrographs) == 1


def test_corrupt_micrograph_stops_run_or_is_skipped(tmp_path):
    root = make_dataset(tmp_path / "ds", n_mics=3)
    good = np.asarray(read_stack(extract_particles(root, tmp_path / "good", 32, progress=False).stack_path).data)
    bad = root / "micrographs" / "mic_1.mrc"
    bad.write_bytes(bad.read_bytes()[:2000])
    with pytest.raises(BadInputError, match="mic_1.mrc"):
        extract_particles(root, tmp_path / "out", 32, progress=False)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))
    res = extract_particles(root, tmp_path / "out", 32, skip_bad=True, progress=False)
    assert res.n_micrographs == 2 and res.n_particles == 6
    assert res.skipped_micrographs[0][0] == "micrographs/mic_1.mrc"
    # the bad micrograph's slots were closed up: mic_0 then mic_2's particles, in order
    np.testing.assert_array_equal(np.asarray(read_stack(res.stack_path).data), np.concatenate([good[:3], good[6:]]))
    names = read_star(res.star_path).particles["rlnImageName"]
    assert list(names.str.split("@").str[0].astype(int)) == list(range(1, 7))
    assert "1 bad micrograph skipped" in res.summary_line()


def test_coordinates_outside_image_and_no_particles_are_errors(tmp_path):
    root = make_dataset(tmp_path / "ds", n_mics=1)
    csv = root / "ground_truth" / "particle_coordinates" / "mic_0.csv"
    write_cryoppp_csv(csv, pd.DataFrame({"x": [30, 500], "y": [30, 30]}), force=True)
    with pytest.raises(BadInputError, match="mic_0.mrc.*outside the 128x96 image"):
        extract_particles(root, tmp_path / "out", 32, progress=False)
    write_cryoppp_csv(csv, pd.DataFrame({"x": [2], "y": [2]}), force=True)
    with pytest.raises(BadInputError, match="no particles were written"):
        extract_particles(root, tmp_path / "out", 32, progress=False)
    assert not (tmp_path / "out").exists()


def test_workers_give_the_same_output(tmp_path):
    root = make_dataset(tmp_path / "ds", n_mics=4)
    a = extract_particles(root, tmp_path / "a", 32, progress=False)
    b = extract_particles(root, tmp_path / "b", 32, workers=2, progress=False)
    np.testing.assert_array_equal(np.asarray(read_stack(a.stack_path).data), np.asarray(read_stack(b.stack_path).data))
    assert read_star(a.star_path).particles.equals(read_star(b.star_path).particles)


def test_cli_errors_are_one_line_and_exit_2(tmp_path, capsys):
    root = make_dataset(tmp_path / "ds", n_mics=1)
    assert cli_main(["extract", str(root), "--box", "31", "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "even" in err[0] and str(root) in err[0]
    assert cli_main(["extract", str(root), "--box", "32", "-o", str(tmp_path / "o")]) == 0
    assert cli_main(["extract", str(root), "--box", "32", "-o", str(tmp_path / "o")]) == 2  # exists
    assert "already exists" in capsys.readouterr().err
    assert cli_main(["extract", str(root), "-o", str(tmp_path / "o"), "--force"]) == 0  # box 30 from diameter 20
    assert read_stack(tmp_path / "o" / "particles.mrcs").data.shape[1:] == (30, 30)


def test_real_empiar10017_jpeg_particles_are_centred(shared_data, tmp_path):
    src = shared_data / "empiar10017"
    assert cli_main(["extract", str(src), "--box", "160", "-o", str(tmp_path / "out")]) == 0
    coords = pd.read_csv(src / "Falcon_2012_06_12-14_33_35_0.csv")
    fits = ((coords["X-Coordinate"] - 80 >= 0) & (coords["X-Coordinate"] + 80 <= 4096)
            & (coords["Y-Coordinate"] - 80 >= 0) & (coords["Y-Coordinate"] + 80 <= 4096))
    with mrcfile.open(tmp_path / "out" / "particles.mrcs") as mrc:
        data = np.asarray(mrc.data)
    star = starfile.read(tmp_path / "out" / "particles.star")
    assert data.shape == (int(fits.sum()), 160, 160) and len(star["particles"]) == len(data)
    avg = data.mean(axis=0)
    yy, xx = np.mgrid[:160, :160]
    r = np.hypot(xx - 80, yy - 80)
    centre, rim = avg[r < 20].mean(), avg[r > 60].mean()
    # this JPEG shows protein dark on a light background: the average is darker at its centre,
    # by many times the rim's pixel-to-pixel noise
    assert abs(centre - rim) > 5 * avg[r > 60].std()
    assert centre < rim
    # every pick fits a 160 px box here; at 300 px the boxes of the 16 picks nearest the edges leave
    # the image and are skipped (counted), the others are written once each, in the CSV's order
    res = extract_particles(src, tmp_path / "out300", 300, progress=False)
    fits = ((coords["X-Coordinate"] - 150 >= 0) & (coords["X-Coordinate"] + 150 <= 4096)
            & (coords["Y-Coordinate"] - 150 >= 0) & (coords["Y-Coordinate"] + 150 <= 4096))
    assert 0 < (~fits).sum() < len(coords)
    assert res.n_particles == int(fits.sum()) and res.n_skipped_edge == int((~fits).sum())
    t = read_star(res.star_path).particles
    np.testing.assert_array_equal(t["rlnCoordinateX"], coords.loc[fits, "X-Coordinate"])
    np.testing.assert_array_equal(t["rlnCoordinateY"], coords.loc[fits, "Y-Coordinate"])


def test_partial_star_match_fills_ctf_and_drops_poses(tmp_path):
    root = make_dataset(tmp_path / "ds", n_mics=1, with_star=True)
    star = root / "ground_truth" / "10999_particles_selected.star"
    table = read_star(star).particles
    write_star(star, table.drop(index=1), force=True)  # particle (70, 40) has no STAR row now
    res = extract_particles(root, tmp_path / "out", 32, progress=False)
    t = read_star(res.star_path).particles
    assert len(t) == 3 and "rlnAngleRot" not in t
    assert any("rlnAngleRot" in n for n in res.notes)
    # the STAR rows left for this micrograph have 10000, 10002, 10003: the unmatched particle takes 10002
    np.testing.assert_allclose(t["rlnDefocusU"], [10000, 10002, 10002])
    assert t["rlnOpticsGroup"].dtype.kind == "i"


def test_stack_per_micrograph_matches_single_stack(tmp_path):
    from cryomap.io.star import image_locations

    root = make_dataset(tmp_path / "ds", n_mics=3)
    one = extract_particles(root, tmp_path / "one", 32, progress=False)
    per = extract_particles(root, tmp_path / "per", 32, stack_per_micrograph=True, workers=1, progress=False)
    assert sorted(p.name for p in (tmp_path / "per" / "stacks").iterdir()) == [
        f"mic_{m}_particles.mrcs" for m in range(3)]
    table = read_star(per.star_path)
    idx, stacks = image_locations(table)
    images = np.stack([np.asarray(read_stack(s).data)[i] for i, s in zip(idx, stacks)])
    np.testing.assert_array_equal(images, np.asarray(read_stack(one.stack_path).data))


@pytest.mark.parametrize("options", [{}, {"phase_flip": True, "invert": True}, {"edge": "pad"},
                                     {"stack_per_micrograph": True}, {"bin_factor": 2.0}])
def test_particles_in_small_chunks_write_the_bytes_of_one_chunk(tmp_path, monkeypatch, options):
    """A micrograph's particles are processed and written in buffers of CHUNK_BYTES (one positioned write
    each): two particles a buffer give the bytes of all of a micrograph's particles in one, header
    statistics included, whatever the steps (phase flip, edge padding, one stack per micrograph). Binning is
    torch's batched FFT, whose last bits depend on the batch size: equal to float32 rounding there."""
    import cryomap.particles.extract as extract_module

    root = make_dataset(tmp_path / "ds", n_mics=3, with_star=True)
    whole = extract_particles(root, tmp_path / "whole", 32, progress=False, **options)
    monkeypatch.setattr(extract_module, "CHUNK_BYTES", 2 * 4 * whole.out_box**2)
    small = extract_particles(root, tmp_path / "small", 32, progress=False, **options)
    assert small.n_particles == whole.n_particles > 2
    files = sorted(p.relative_to(tmp_path / "whole") for p in (tmp_path / "whole").rglob("*.mrcs"))
    assert files
    for name in files:
        if "bin_factor" in options:
            np.testing.assert_allclose(read_stack(tmp_path / "small" / name).data, read_stack(tmp_path / "whole" / name).data,
                                       rtol=0, atol=1e-5)
            continue
        assert (tmp_path / "small" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name


def test_stack_header_statistics_are_those_of_the_particles(tmp_path):
    """dmin, dmax, dmean and rms of the written stack: the extremes exactly, mean and rms to float32 rounding."""
    root = make_dataset(tmp_path / "ds", n_mics=3)
    res = extract_particles(root, tmp_path / "out", 32, edge="pad", progress=False)
    with mrcfile.open(res.stack_path) as mrc:
        data, h = np.asarray(mrc.data, dtype=np.float64), mrc.header
        assert len(data) == int(h.nz) == res.n_particles == 12
        assert float(h.dmin) == data.min() and float(h.dmax) == data.max()
        assert float(h.dmean) == pytest.approx(data.mean(), abs=1e-6)
        assert float(h.rms) == pytest.approx(data.std(), rel=1e-6)


@pytest.mark.filterwarnings("ignore:Data array contains infinite values", "ignore:invalid value encountered")
def test_a_nan_pixel_outside_every_box_still_refuses_the_micrograph(tmp_path):
    """The finite check reads the whole micrograph, not only its boxes: a NaN anywhere is a corrupt file."""
    root = make_dataset(tmp_path / "ds", n_mics=2)
    img = blob_micrograph((96, 128), [(30, 30)])
    img[95, 127] = np.inf
    write_mrc(root / "micrographs" / "mic_1.mrc", img, APIX, force=True)
    with pytest.raises(BadInputError, match="NaN or infinite") as err:
        extract_particles(root, tmp_path / "out", 32, progress=False)
    assert err.value.path.name == "mic_1.mrc"
    res = extract_particles(root, tmp_path / "out", 32, skip_bad=True, progress=False)
    assert res.n_micrographs == 1 and res.skipped_micrographs[0][0].endswith("mic_1.mrc")
